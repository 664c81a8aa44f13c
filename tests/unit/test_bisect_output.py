"""What a finished search writes: minimal.json, repro_min.sh / repro_min.py, the ISSUE section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from repro.bisect.output import write_outputs
from repro.bisect.search import Decision, Result, Settings
from repro.bisect.space import Change, Config, SearchSpace
from repro.bisect.stats import RatePosterior
from repro.scenario import Scenario


def finished(tmp: Path) -> tuple[Path, dict]:
    sp = SearchSpace(1, 32, (Change.parse("storage=/dev/shm/repro-bisect-slow"), Change.parse("timeout=120")))
    cfg = Config(8, frozenset({Change.parse("storage=/dev/shm/repro-bisect-slow")}))
    res = Result("minimal", cfg, {cfg.key(): {"hangs": 3, "exposure": 5400.0}}, RatePosterior(3, 5400.0),
                 RatePosterior(3, 3600.0), [Decision("concurrency", "threshold: hangs from concurrency 8")],
                 20 * 3600.0, 20 * 3600.0, 12, 0.97, ["observation contradicts monotonicity: ..."])
    base = Scenario()
    base.server.model = str(tmp / "model")
    (tmp / "model").mkdir()
    base.server.vllm_cmd = ["vllm", "serve"]
    base.server.port = 8431
    base.server.inject = "hazard=60,min_running=8"
    out = tmp / "run"
    out.mkdir()
    write_outputs(out, res, sp, Settings(), base, "real")
    return out, json.loads((out / "minimal.json").read_text())


def test_minimal_json_has_config_rate_interval_and_evidence(tmp_path: Path) -> None:
    _, doc = finished(tmp_path)
    assert doc["schema"] == "repro.bisect.minimal" and doc["version"] == 2
    assert doc["config"] == {"concurrency": 8, "changes": ["storage=/dev/shm/repro-bisect-slow"]}
    lo, hi = doc["rate"]["ci95_per_hour"]
    assert lo < doc["rate"]["per_hour"] == 2.0 < hi  # 3 hangs in 1.5 h
    assert doc["rate"]["mean_time_to_hang_s"] == 1800.0
    assert doc["evidence"][0]["hangs"] == 3 and doc["warnings"]
    assert doc["server_command"][:2] == ["vllm", "serve"]
    assert doc["load"]["concurrency"] == 8 and doc["load"]["timeout"] == 3600.0  # timeout=120 was removed


def test_repro_min_sh_is_valid_shell_with_the_serve_line_and_the_load(tmp_path: Path) -> None:
    out, doc = finished(tmp_path)
    sh = (out / "repro_min.sh").read_text()
    assert subprocess.run(["sh", "-n", str(out / "repro_min.sh")]).returncode == 0
    assert "vllm serve" in sh and '--port "$PORT"' in sh and "PORT=${PORT:-8431}" in sh
    assert "REPRO_INJECT=" in sh  # the injected fault is stated, not hidden
    assert "repro_min.py" in sh and "--concurrency 8" in sh
    assert "kill -TERM -- -$SERVER" in sh  # the server's whole group is stopped


def test_repro_min_py_needs_no_repro_and_carries_the_minimal_settings(tmp_path: Path) -> None:
    out, _ = finished(tmp_path)
    py = (out / "repro_min.py").read_text()
    assert "import repro" not in py and "from repro" not in py
    r = subprocess.run([sys.executable, "-I", str(out / "repro_min.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--concurrency" in r.stdout
    ns = {}
    exec(compile(py.split("def parse_metrics")[0], "repro_min.py", "exec"), ns)  # the DEFAULTS block only
    assert ns["DEFAULTS"]["concurrency"] == 8 and ns["DEFAULTS"]["workload"] == "chat"


def test_repro_min_py_metrics_parser_sums_label_sets() -> None:
    from repro.bisect.minload import metric, parse_metrics

    text = ('# HELP vllm:num_requests_running x\nvllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
            'vllm:num_requests_running{engine="1",model_name="m"} 2.0\n'
            'vllm:generation_tokens_total{engine="0"} 1.5e3\n')
    m = parse_metrics(text)
    assert metric(m, "vllm:num_requests_running") == 5.0
    assert metric(m, "vllm:generation_tokens") == 1500.0


def test_issue_section_states_result_interval_and_error_level(tmp_path: Path) -> None:
    out, _ = finished(tmp_path)
    md = (out / "ISSUE_bisect.md").read_text()
    assert md.startswith("## Minimal reproducer (repro bisect)")
    assert "concurrency 8, storage=/dev/shm/repro-bisect-slow" in md
    assert "95% credible interval" in md and "alpha = 0.05" in md and "vllm serve" in md


def test_an_aging_reproducer_states_the_onset_it_needs_and_runs_past_it_on_one_server(tmp_path: Path) -> None:
    """GIVEN a search that found an aging hazard (hangs after 5-5.5 h of continuous load) THEN repro_min.sh
    says the hang needs the server to age, with the onset and its bound, runs its load for twice the
    longest uptime at a hang (not 5 mean times to hang), and minimal.json / ISSUE_bisect.md carry the model."""
    from repro.bisect.hazard import Run, aging_model, memorylessness, onset_of

    sp = SearchSpace(1, 32, (Change.parse("storage=/mnt/nfs/hs"),))
    cfg = Config(16, frozenset(sp.changes))
    ups = [5 * 3600.0 + 120, 5 * 3600.0 + 900, 5.5 * 3600.0]
    test = memorylessness([[Run(0.0, u, True) for u in ups]])
    model = aging_model(test, onset_of(ups), 3600.0, "memorylessness rejected")
    hazard = {**model.to_dict(), "minimal_onset": onset_of(ups).to_dict(), "text": "hazard model: aging (...)"}
    res = Result("minimal", cfg, {cfg.key(): {"hangs": 3, "exposure": sum(ups)}}, RatePosterior(3, sum(ups)), None,
                 [], 60 * 3600.0, 60 * 3600.0, 9, 0.97, [], hazard, {cfg.key(): ups})
    out = tmp_path / "run"
    out.mkdir()
    write_outputs(out, res, sp, Settings(), None, "simulate")
    sh = (out / "repro_min.sh").read_text()
    assert "needs the server to age: hangs after about 4h55m" in sh and "at 95%" in sh and "ONE server" in sh
    assert f"--duration {int(2 * max(ups))}" in sh
    assert subprocess.run(["sh", "-n", str(out / "repro_min.sh")]).returncode == 0
    doc = json.loads((out / "minimal.json").read_text())
    assert doc["hazard"]["model"] == "aging" and doc["hang_uptimes_s"][cfg.key()] == [round(u, 1) for u in ups]
    assert "- Hazard model: aging" in (out / "ISSUE_bisect.md").read_text()


def _run_min(out: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", str(out / "repro_min.py"), "--url", url, "--concurrency", "2",
                           "--window", "1.5", "--poll", "0.3", *extra], capture_output=True, text=True, timeout=60)


def test_repro_min_py_calls_a_stall_whose_gauge_froze_at_zero_from_its_own_unanswered_requests(
        tmp_path: Path) -> None:
    """GIVEN a server whose engine answers nothing, whose running gauge froze at 0 (the stall struck right
    after a step that finished every request) and whose token counters are flat THEN repro_min.py calls it a
    stall (exit 1) from the requests it is waiting on; while tokens advance it says no stall (exit 0)."""
    from tests.helpers_fake_vllm import FakeVllm

    out, _ = finished(tmp_path)
    fake = FakeVllm()
    try:
        fake.running, fake.advance, fake.hang_completions = 0, 0.0, 8.0
        r = _run_min(out, fake.url, "--duration", "20")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "STALL: 0 requests running (2 of this load unanswered)" in r.stdout
        fake.advance, fake.hang_completions = 5.0, 0.0
        r = _run_min(out, fake.url, "--duration", "3")
        assert r.returncode == 0 and "no stall" in r.stdout, r.stdout + r.stderr
    finally:
        fake.close()
