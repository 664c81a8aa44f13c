"""Bad input to `repro bisect` / `repro trial`: one clear line, exit 2 (and 125 for a target that cannot be tested)."""

from __future__ import annotations

from pathlib import Path

import pytest

from repro.bisect.space import Change, SearchSpace, space_from_toml
from repro.errors import UsageError
from tests.conftest import free_port
from tests.helpers_cli import one_line_error, repro_subprocess
from tests.helpers_cli import repro_inprocess as repro

MODEL = """
[space]
concurrency = [1, 8]
changes = ["storage=/mnt/nfs/hs"]
[hazard]
mean_time_to_hang = "1h"
requires = ["storage"]
[sim]
seed = 1
"""


@pytest.mark.parametrize("rng, words", [("8-2", "inverted"), ("", "empty"), ("0-4", "at least 1"),
                                        ("a-b", "whole numbers")])
def test_bad_concurrency_range_is_one_line_exit_2(rng: str, words: str) -> None:
    line = one_line_error(repro("bisect", "--concurrency", rng, "--out", "/tmp/repro-bisect-never"))
    assert words in line


def test_unknown_toggle_is_one_line_exit_2_naming_the_known_ones() -> None:
    line = one_line_error(repro("bisect", "--concurrency", "1-8", "--change", "turbo=on"))
    assert "unknown toggle 'turbo'" in line and "storage" in line


def test_budget_too_small_for_one_trial_is_refused(tmp_path: Path) -> None:
    line = one_line_error(repro("bisect", "--concurrency", "1-8", "--budget", "1m", "--out", str(tmp_path / "r")))
    assert "too small for one trial" in line


def test_budget_too_small_in_simulation_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_text(MODEL)
    line = one_line_error(repro("bisect", "--simulate", str(tmp_path / "m.toml"), "--budget", "30s"))
    assert "too small for one trial" in line


def test_journal_from_another_search_is_refused_on_resume_and_on_reuse(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_text(MODEL)
    run = tmp_path / "run"
    assert repro("bisect", "--simulate", str(tmp_path / "m.toml"), "--out", str(run)).returncode == 0
    other = tmp_path / "other.toml"
    other.write_text(MODEL.replace("[1, 8]", "[1, 16]"))
    line = one_line_error(repro("bisect", "--simulate", str(other), "--resume", str(run)))
    assert "another search" in line
    line = one_line_error(repro("bisect", "--simulate", str(other), "--out", str(run)))
    assert "another search" in line


def test_resume_of_a_directory_without_journal_is_refused(tmp_path: Path) -> None:
    line = one_line_error(repro("bisect", "--resume", str(tmp_path)))
    assert "no bisect journal" in line


def test_missing_space_is_refused() -> None:
    line = one_line_error(repro("bisect"))
    assert "--concurrency" in line


@pytest.mark.parametrize("text, msg", [("storage", "needs a value"), ("extract=0", "whole number"),
                                       ("prefix-caching=maybe", "on or off"), ("consume=delete", "plain client")])
def test_change_values_are_validated(text: str, msg: str) -> None:
    with pytest.raises(UsageError, match=msg):
        Change.parse(text)


def test_same_toggle_twice_is_refused() -> None:
    with pytest.raises(UsageError, match="given twice"):
        SearchSpace(1, 4, (Change.parse("timeout=10"), Change.parse("timeout=20")))


def test_space_toml_with_unknown_key_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text('concurrency = [1, 4]\nchangez = ["timeout=1"]\n')
    with pytest.raises(UsageError, match="unknown key"):
        space_from_toml(p)


def test_trial_exits_125_when_the_target_cannot_be_reached(tmp_path: Path) -> None:
    """git bisect run must skip (125), not mark bad, a commit whose server does not answer."""
    r = repro_subprocess("trial", "--url", f"http://127.0.0.1:{free_port()}", "--duration", "5",
                         "--out", str(tmp_path / "t"))
    assert r.returncode == 125, (r.stdout, r.stderr)
    assert "could not test" in r.stderr or "skip" in r.stderr


def test_trial_bad_option_exits_2() -> None:
    r = repro("trial", "--concurrency", "0", "--url", "http://127.0.0.1:1")
    assert r.returncode == 2


def test_server_option_that_is_a_search_toggle_must_be_given_as_a_change() -> None:
    line = one_line_error(repro("bisect", "--concurrency", "1-4", "--prefix-caching"))
    assert "--change prefix-caching=on|off" in line


def test_storage_ladder_from_a_change_keeps_the_last_path_as_the_baselines() -> None:
    sp = SearchSpace(1, 4, (Change.parse("storage=/dev/shm/a,/data/hs,/mnt/nfs/hs"),))
    assert sp.changes == (Change("storage", "/mnt/nfs/hs"),)
    assert sp.storage_ladder == ("/dev/shm/a", "/data/hs")
    assert sp.storage_rungs == ("/dev/shm/a", "/data/hs", "/mnt/nfs/hs")


def test_storage_ladder_from_toml_list_matches_the_change_form(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text('concurrency = [1, 4]\nstorage = ["/data/hs", "/mnt/nfs/hs"]\nchanges = ["timeout=10"]\n')
    sp = space_from_toml(p)
    same = SearchSpace(1, 4, (Change.parse("timeout=10"), Change.parse("storage=/data/hs,/mnt/nfs/hs")))
    assert sp.identity() == same.identity()
    assert sp.identity() != SearchSpace(1, 4, (Change.parse("timeout=10"), Change.parse("storage=/mnt/nfs/hs"))).identity()


@pytest.mark.parametrize("value, msg", [("/a,,/b", "empty path"), ("/a,/a", "appear once"),
                                        ("/dev/shm/repro-bisect-hs,/b", "not the plain")])
def test_bad_storage_ladder_is_refused(value: str, msg: str) -> None:
    line = one_line_error(repro("bisect", "--concurrency", "1-8", "--change", f"storage={value}"))
    assert msg in line


def test_storage_ladder_survives_resume(tmp_path: Path) -> None:
    """The journal's header keeps the ladder: --resume rebuilds the same search."""
    (tmp_path / "m.toml").write_text(MODEL.replace('"storage=/mnt/nfs/hs"', '"storage=/data/hs,/mnt/nfs/hs"'))
    run = tmp_path / "run"
    assert repro("bisect", "--simulate", str(tmp_path / "m.toml"), "--out", str(run)).returncode == 0
    r = repro("bisect", "--resume", str(run))
    assert r.returncode == 0, r.stderr


AGING = """
[space]
concurrency = [1, 8]
changes = ["storage=/mnt/nfs/hs"]
[hazard]
shape = "weibull"
k = 4
mean_time_to_hang = "1h"
requires = ["storage"]
[sim]
seed = 2
"""


def test_simulate_prints_the_ground_truth_next_to_the_answer_and_the_model(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_text(AGING)
    r = repro("bisect", "--simulate", str(tmp_path / "m.toml"), "--out", str(tmp_path / "run"),
              "--baseline-hangs", "5")
    assert r.returncode == 0, r.stderr
    truth = [ln for ln in r.stdout.splitlines() if ln.startswith("[simulate] ground truth:")]
    assert truth and "concurrency 1, storage=/mnt/nfs/hs" in truth[0] and "Weibull k=4" in truth[0]
    assert truth[0].endswith(": right")
    assert any(ln.startswith("[model] hazard model: aging") for ln in r.stdout.splitlines())
    log = repro("bisect", "--log", str(tmp_path / "run"))
    assert "latest hazard model: aging" in log.stdout and "Weibull shape k" in log.stdout
    assert "hangs after about" in log.stdout  # the onset estimate of an aging hazard
    assert "server uptime" in log.stdout and "at the stall" in log.stdout  # each hang's uptime


def test_prior_takes_the_uptimes_at_each_hang(tmp_path: Path) -> None:
    """--prior 6h,5h,14h: three servers that hung after those uptimes (also a rate prior of 3 hangs in 25 h)."""
    (tmp_path / "m.toml").write_text(MODEL)
    run = tmp_path / "run"
    assert repro("bisect", "--simulate", str(tmp_path / "m.toml"), "--prior", "6h,5h,14h", "--out",
                 str(run)).returncode == 0
    import json

    header = json.loads((run / "journal.jsonl").read_text().splitlines()[0])
    assert header["settings"]["prior_uptimes"] == [21600.0, 18000.0, 50400.0]
    assert header["settings"]["prior"] == [3, 90000.0]


@pytest.mark.parametrize("args, words", [(("--prior", "6h,0"), "positive uptimes"), (("--prior", "6h,soon"), "--prior uptime"),
                                         (("--fresh-server", "--reuse-server"), "contradict"),
                                         (("--hazard-model", "weibull"), "weibull")])
def test_bad_hazard_options_are_one_line_errors(tmp_path: Path, args: tuple[str, ...], words: str) -> None:
    (tmp_path / "m.toml").write_text(MODEL)
    r = repro("bisect", "--simulate", str(tmp_path / "m.toml"), "--out", str(tmp_path / "r"), *args)
    assert r.returncode == 2
    assert words in (r.stderr + r.stdout)


@pytest.mark.parametrize("hazard, words", [('shape = "gamma"', "use one of"), ('shape = "weibull"\nk = 0', "between"),
                                           ("k = 3", "needs shape"), ('shape = "onset"', "needs onset"),
                                           ('shape = "onset"\nresource = "files"\nlevel = 5', "growth_per_hour"),
                                           ("speed_up = 2", "unknown [hazard] key")])
def test_bad_aging_hazards_in_a_simulation_model_are_refused(tmp_path: Path, hazard: str, words: str) -> None:
    (tmp_path / "m.toml").write_text(MODEL.replace('requires = ["storage"]', f'requires = ["storage"]\n{hazard}'))
    line = one_line_error(repro("bisect", "--simulate", str(tmp_path / "m.toml"), "--out", str(tmp_path / "r")))
    assert words in line
