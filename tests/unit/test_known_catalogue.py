"""The known-hang catalogue: each seeded entry recognises the stack its upstream thread quotes and nothing else,
repro's own test bundles say "injected by repro", healthy engines match nothing, and a malformed entry is one line
naming its file and field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from repro.analyze import catalogue as cat
from repro.analyze import known
from repro.analyze.evidence import read_injected
from repro.analyze.stacks import analyze_bundle_dir
from repro.cli import main
from tests.helpers_bundles import build_bundle, fixture_paths, load_description
from tests.helpers_cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "traces"
HEALTHY_CPU = ROOT / "tests" / "unit" / "data" / "healthy-cpu"
FIXTURES = {p.stem: p for p in fixture_paths()}


@pytest.fixture(scope="module")
def shipped() -> cat.Catalogue:
    return cat.load(env={})


def bundle_of(name: str, tmp_path: Path) -> Path:
    return build_bundle(load_description(FIXTURES[name]), tmp_path / name)


def matched_ids(bundle: Path, catalogue: cat.Catalogue) -> list[str]:
    return [m["id"] for m in analyze_bundle_dir(bundle, catalogue)["known_matches"]]


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_each_fixture_matches_exactly_the_entries_it_was_built_for(name: str, tmp_path: Path,
                                                                   shipped: cat.Catalogue) -> None:
    """GIVEN a bundle built from the stack, log lines and metric shape an upstream thread quotes (or a healthy
    shape) WHEN it is matched against the shipped catalogue THEN it matches its entry and no other."""
    desc = load_description(FIXTURES[name])
    assert sorted(matched_ids(bundle_of(name, tmp_path), shipped)) == sorted(desc["expect"]), desc["source"]


def test_every_seeded_entry_has_a_fixture_that_matches_it(shipped: cat.Catalogue) -> None:
    """No entry goes untested: each id is expected by a fixture (the two traces/ bundles cover two)."""
    covered = {e for p in FIXTURES.values() for e in load_description(p)["expect"]}
    covered |= {"repro-injected-scheduler-stall", "repro-injected-write-stall"}  # traces/, tested below
    assert {e.id for e in shipped.entries} == covered


def test_the_issue_list_is_seeded(shipped: cat.Catalogue) -> None:
    """The upstream numbers the catalogue must know, each cited by an entry with a link."""
    refs = {u.ref for e in shipped.entries for u in e.upstream}
    for n in (52247, 52365, 42897, 40926, 45388, 44560, 49674, 49675, 57104, 43885, 56841, 43805):
        assert f"vllm-project/vllm#{n}" in refs, n
    assert "flashinfer-ai/flashinfer#3610" in refs
    assert all(u.url.startswith("https://github.com/") for e in shipped.entries for u in e.upstream)
    storage = [e for e in shipped.entries if e.origin == "repro"]
    assert storage and all(e.status == "unreported" and not e.upstream for e in storage)


@pytest.mark.parametrize("name,entry", [("scheduler-stall", "repro-injected-scheduler-stall"),
                                        ("write-stall", "repro-injected-write-stall")])
def test_the_traces_bundles_match_only_their_injected_fault(name: str, entry: str, shipped: cat.Catalogue) -> None:
    a = analyze_bundle_dir(TRACES / name, shipped)
    assert [m["id"] for m in a["known_matches"]] == [entry]
    assert known.summary_lines(a)[0].startswith("known: injected by repro: ")
    assert "none upstream" in known.possibly_related(a) and "vllm-project" not in known.possibly_related(a)


def test_the_write_stall_trace_replays_the_fault_log_per_process(shipped: cat.Catalogue) -> None:
    """Its log holds the earlier stall-after (released) and the write-stall: only the write-stall is active."""
    log = (TRACES / "write-stall" / "context" / "server.log.tail").read_text()
    inj = read_injected(log, [], {}, [])
    assert inj.active == {"write-stall"} and inj.history >= {"stall-after", "write-stall"}


def test_an_injected_gpu_hang_is_injected_by_repro_not_the_upstream_hang_of_the_same_shape(
        tmp_path: Path, shipped: cat.Catalogue) -> None:
    """The gpu-hang fault leaves vLLM's own CUDA wait in the stack, the shape of #52247: without the plugin's
    record it matches #52247, with it only the injected entry."""
    b = bundle_of("repro-injected-gpu-hang", tmp_path)
    assert matched_ids(b, shipped) == ["repro-injected-gpu-hang"]
    (b / "context" / "server.log.tail").write_text("")
    (b / "context" / "server-env.json").write_text("{}")
    assert matched_ids(b, shipped) == ["vllm-52247-async-output-event-wait"]


@pytest.mark.parametrize("name", ["loaded", "idle"])
def test_real_healthy_cpu_engines_match_nothing(name: str, shipped: cat.Catalogue) -> None:
    """Bundles of a real vLLM on CPU (tests/unit/data/healthy-cpu/make_healthy.sh), under load and after it."""
    a = analyze_bundle_dir(HEALTHY_CPU / name, shipped)
    assert a["known_matches"] == []
    assert known.summary_lines(a) == [f"known: no known match among {len(shipped.entries)} entries (catalogue of "
                                      f"{shipped.date})"]


def test_an_idle_cpu_engine_after_its_load_is_idle_not_blocked(shipped: cat.Catalogue) -> None:
    """The real idle bundle: EngineCore waits for requests in _process_input_queue with nothing running."""
    a = analyze_bundle_dir(HEALTHY_CPU / "idle", shipped)
    assert a["verdict"] == "idle" and a["stuck_threads"] == [] and a["culprit"] is None
    assert "_process_input_queue" in a["stuck_frame"] and "holds none" in a["verdict_reason"]
    assert a["processes"][0]["verdict"] == "idle"


def test_an_idle_gpu_engine_is_idle_and_a_python_stall_leaves_the_gpu_idle(tmp_path: Path,
                                                                          shipped: cat.Catalogue) -> None:
    idle = analyze_bundle_dir(bundle_of("healthy-gpu-idle", tmp_path), shipped)
    assert idle["verdict"] == "idle" and "blocked" not in idle["verdict_reason"]
    stall = analyze_bundle_dir(bundle_of("python-stall-gpu-idle", tmp_path), shipped)
    assert stall["verdict"] == "blocked" and stall["cuda_wait"] is None
    assert "idle" in stall["gpu"]["note"] and "host side (Python)" in stall["gpu"]["note"]


def test_a_cuda_wait_is_named_blocked_and_the_gpu_busy_is_said(tmp_path: Path, shipped: cat.Catalogue) -> None:
    """cuEventSynchronize spin-waits: the thread burns a core (CPU says busy), --native says it waits for the GPU,
    and the GPU reads 100 % throughout."""
    a = analyze_bundle_dir(bundle_of("repro-injected-gpu-hang", tmp_path), shipped)
    main_t = a["processes"][0]["threads"][0]
    assert main_t["cpu_seconds"] > 0.9 * main_t["window_seconds"]  # spinning
    assert main_t["verdict"] == "blocked" and main_t["cuda_wait"] == "cuEventSynchronize (libcuda.so.1)"
    assert main_t["stuck_frame"].startswith("AsyncGPUModelRunnerOutput.get_output (")  # torch's wait is the wait
    assert main_t["native_tip"][0].startswith("cuEventSynchronize")
    assert a["cuda_wait"] == "cuEventSynchronize (libcuda.so.1)" and "waits for the GPU" in a["verdict_reason"]
    assert "stayed busy in all 4 readings" in a["gpu"]["note"] and "never finishes" in a["gpu"]["note"]


def test_a_scheduler_livelock_is_busy_although_its_stacks_move(tmp_path: Path, shipped: cat.Catalogue) -> None:
    a = analyze_bundle_dir(bundle_of("vllm-45388-offloading", tmp_path), shipped)
    assert a["processes"][0]["verdict"] == "progressing"
    assert a["verdict"] == "busy" and "livelock" in a["verdict_reason"] and "waiting=2" in a["verdict_reason"]


def test_moving_token_counters_keep_a_gpu_bound_engine_out_of_the_catalogue(tmp_path: Path,
                                                                            shipped: cat.Catalogue) -> None:
    """Every sample in the #52247 frames, but tokens advance: progressing, and no match."""
    a = analyze_bundle_dir(bundle_of("healthy-gpu-bound", tmp_path), shipped)
    assert a["verdict"] == "progressing" and a["known_matches"] == []
    check = {m.entry.id: m for m in known.check_all(shipped, _evidence(tmp_path / "healthy-gpu-bound", a))}
    m = check["vllm-52247-async-output-event-wait"]
    assert not m.matched and "bundle verdict progressing" in (m.why_not or "")


def _evidence(bundle: Path, analysis: dict) -> "known.Evidence":
    from repro.analyze.evidence import gather
    return gather(bundle, analysis)


# -- versions ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version,verdict", [("0.20.2", "not affected"), ("0.26.0", "affected"),
                                             ("0.32.0+cpu", "fixed"), ("0.33.1", "fixed"), (None, "unknown"),
                                             ("0.25.0rc1.dev12+gabc", "affected")])
def test_version_verdict_against_the_affected_range_and_the_fix(version: str | None, verdict: str,
                                                                 shipped: cat.Catalogue) -> None:
    e = shipped.get("vllm-56841-hs-connector-abort-keyerror")
    assert e is not None and e.affected == ">=0.24" and e.fixed_in == "0.32.0"
    assert known.version_verdict(e, version).verdict == verdict


def test_an_open_issue_without_a_fix_is_affected_in_range(shipped: cat.Catalogue) -> None:
    e = shipped.get("vllm-52247-async-output-event-wait")
    v = known.version_verdict(e, "0.20.2")
    assert v.verdict == "affected" and v.text == "your version 0.20.2: affected"


# -- ISSUE.md ----------------------------------------------------------------------------------------------
def test_issue_md_names_the_upstream_numbers_and_the_version_verdict(tmp_path: Path) -> None:
    from repro.analyze.issue import find_template, render_issue

    md = render_issue(bundle_of("vllm-52247-v1-runner", tmp_path), find_template())
    line = next(ln for ln in md.splitlines() if "Possibly related:" in ln)
    assert ("vllm-project/vllm#52247 (open; affects >=0.11; your version 0.27.1: affected), "
            "vllm-project/vllm#52365 (PR, open)") in line
    assert "a pointer to read, not a diagnosis" in line


def test_issue_md_says_so_when_nothing_matches(tmp_path: Path, shipped: cat.Catalogue) -> None:
    from repro.analyze.issue import find_template, render_issue

    md = render_issue(bundle_of("python-stall-gpu-idle", tmp_path), find_template())
    line = next(ln for ln in md.splitlines() if "Possibly related:" in ln)
    assert f"no known match among {len(shipped.entries)} entries (catalogue of {shipped.date})" in line
    assert "search vLLM's issues for `save_file`" in line


def test_issue_md_of_a_test_bundle_says_injected_by_repro() -> None:
    from repro.analyze.issue import find_template, render_issue

    md = render_issue(TRACES / "scheduler-stall", find_template())
    line = next(ln for ln in md.splitlines() if "Possibly related:" in ln)
    assert "injected by repro" in line and "#" not in line.split("`")[0]


# -- local entries and malformed ones ----------------------------------------------------------------------
LOCAL = '''schema = "repro.known"
version = 1
updated = 2026-12-02

[[entry]]
id = "site-nfs-write"
title = "Our NFS store hangs the hidden-state write"
origin = "repro"
status = "unreported"
workaround = "Use local disk."
evidence_date = 2026-12-02

[[entry.when]]
kind = "stack"
process = "any"
thread = "any"
frames = ['save_file \\(safetensors/torch\\.py\\)']
required = true
'''


def test_a_local_catalogue_adds_entries_from_flag_or_environment(tmp_path: Path, shipped: cat.Catalogue) -> None:
    f = tmp_path / "site.toml"
    f.write_text(LOCAL)
    b = bundle_of("python-stall-gpu-idle", tmp_path)
    both = cat.load([f], env={})
    assert len(both.entries) == len(shipped.entries) + 1 and both.date == "2026-12-02"
    assert matched_ids(b, both) == ["site-nfs-write"]
    via_env = cat.load(env={cat.ENV: str(tmp_path)})
    assert via_env.get("site-nfs-write") is not None


def test_a_local_entry_replaces_a_shipped_one_with_its_id(tmp_path: Path, shipped: cat.Catalogue) -> None:
    (tmp_path / "x.toml").write_text(LOCAL.replace('"site-nfs-write"', '"vllm-42897-to-list-event-wait"'))
    c = cat.load([tmp_path / "x.toml"], env={})
    assert len(c.entries) == len(shipped.entries) and c.get("vllm-42897-to-list-event-wait").origin == "repro"


@pytest.mark.parametrize("edit,field", [
    (('kind = "stack"', 'kind = "stak"'), "when[0].kind"),
    (("frames = ['save_file \\(safetensors/torch\\.py\\)']", "frames = ['save_file (']"), "when[0].frames[0]"),
    (('status = "unreported"', 'status = "maybe"'), "status"),
    (('evidence_date = 2026-12-02\n', ''), "evidence_date"),
    (('required = true\n', 'required = true\nweight = -1\n'), "when[0].weight"),
    (('required = true\n', 'required = false\n'), "when"),
    (('workaround = "Use local disk."\n', 'workaround = "Use local disk."\naffected = "0.2x"\n'), "affected"),
    (('thread = "any"\n', 'thread = "any"\ncolour = "red"\n'), "when[0].colour"),
    (('schema = "repro.known"', 'schema = "repro.hangs"'), "schema"),
])
def test_a_malformed_entry_is_one_line_naming_file_and_field(edit: tuple[str, str], field: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.toml"
    assert edit[0] in LOCAL
    f.write_text(LOCAL.replace(edit[0], edit[1]))
    with pytest.raises(cat.CatalogueError) as ei:
        cat.load([f], env={})
    msg = ei.value.message
    assert "\n" not in msg and str(f) in msg and f"field {field!r}" in msg
    with pytest.raises(SystemExit) as se:
        main(["known", "--catalogue", str(f)])
    assert se.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"error: {msg}"


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "broken.toml"
    f.write_text("schema = \n")
    with pytest.raises(cat.CatalogueError, match=r"broken\.toml: not valid TOML"):
        cat.load([f], env={})


def test_capture_keeps_its_analysis_when_the_environment_names_a_bad_catalogue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cat.ENV, str(tmp_path / "missing.toml"))
    a = analyze_bundle_dir(TRACES / "scheduler-stall")
    assert a["signature"] == "6a64e85b59ad" and a["known_matches"] == []
    assert "missing.toml" in a["known_error"]


def test_shipped_catalogue_is_packaged_and_versioned() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert "known/*.toml" in text
    for f in sorted((ROOT / "repro" / "known").glob("*.toml")):
        head = f.read_text()
        assert 'schema = "repro.known"' in head and "version = 1" in head


# -- the command -------------------------------------------------------------------------------------------
def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code, out, _ = run_cli(args, capsys)
    return code, out


def test_repro_known_lists_shows_and_prints_json(capsys: pytest.CaptureFixture[str], shipped: cat.Catalogue) -> None:
    rc, out = run(["known"], capsys)
    assert rc == 0 and f"{len(shipped.entries)} known problems (catalogue of {shipped.date}" in out
    assert "vllm-52247-async-output-event-wait" in out and "vllm-project/vllm#52247" in out
    rc, out = run(["known", "vllm-52247-async-output-event-wait"], capsys)
    assert rc == 0 and "https://github.com/vllm-project/vllm/issues/52247" in out and "workaround:" in out
    assert "https://github.com/vllm-project/vllm/pull/52365" in out and "required" in out
    rc, out = run(["known", "--json"], capsys)
    data = json.loads(out)
    assert data["schema"] == "repro.known-catalogue" and len(data["entries"]) == len(shipped.entries)
    rc, out = run(["known", "vllm-52247-async-output-event-wait", "--json"], capsys)
    assert json.loads(out)["upstream"][0]["ref"] == "vllm-project/vllm#52247"


def test_repro_known_rejects_an_unknown_id(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["known", "vllm-52247"])
    assert ei.value.code == 2
    assert "did you mean vllm-52247-async-output-event-wait" in capsys.readouterr().err


def test_repro_known_check_explains_the_match_part_by_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    b = bundle_of("vllm-42897-to-list", tmp_path)
    rc, out = run(["known", "--check", str(b)], capsys)
    assert rc == 0 and "1 match(es)" in out
    block = out.split("MATCH vllm-42897-to-list-event-wait", 1)[1].split("\n\n", 1)[0]
    assert "+ [required] stack of" in block and "GPUModelRunner._to_list" in block
    assert "+ [w=2] native of" in block and "cuEventSynchronize (libcuda.so.1)" in block
    assert "your version 0.21.0: affected" in block
    rc, out = run(["known", "vllm-52247-async-output-event-wait", "--check", str(b)], capsys)
    assert "no    vllm-52247-async-output-event-wait" in out and "why not: required part fails" in out
    rc, out = run(["known", "--check", str(b), "--json"], capsys)
    data = json.loads(out)
    assert data["schema"] == "repro.known-check" and data["results"][0]["is_match"]


def test_repro_analyze_prints_the_best_match_with_link_and_workaround(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    b = bundle_of("vllm-43885-gb10", tmp_path)
    rc, out = run(["analyze", str(b)], capsys)
    assert rc == 0
    assert "known: vllm-project/vllm#43885 (open; affects >=0.21,<0.27; your version 0.23.0: affected)" in out
    assert "https://github.com/vllm-project/vllm/issues/43885" in out and "VLLM_USE_FLASHINFER_SAMPLER=0" in out
    assert "in a CUDA wait: cuEventSynchronize (libcuda.so.1)" in out and "gpu: The GPU stayed busy" in out
    rc, out = run(["analyze", "--json", str(b)], capsys)
    m = json.loads(out)[0]["known_matches"][0]
    assert m["id"] == "vllm-43885-flashinfer-sampler-sm12x" and m["unmatched"] == []
    assert {"matched", "unmatched", "score", "version"} <= set(m)


def test_repro_analyze_takes_a_local_catalogue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "site.toml"
    f.write_text(LOCAL)
    b = bundle_of("python-stall-gpu-idle", tmp_path)
    rc, out = run(["analyze", "--catalogue", str(f), str(b)], capsys)
    assert "known: no upstream issue yet: Our NFS store hangs the hidden-state write" in out


def test_fixture_tarball_of_a_trace_still_matches(tmp_path: Path, shipped: cat.Catalogue) -> None:
    from repro.bundle.reader import open_bundle

    d = open_bundle(TRACES / "write-stall.tar.gz", tmp_path)
    assert matched_ids(d, shipped) == ["repro-injected-write-stall"]
    shutil.rmtree(d)


def test_the_readme_example_entry_is_a_valid_catalogue(tmp_path: Path) -> None:
    """The format README.md documents is the format the loader reads."""
    section = (ROOT / "README.md").read_text().split("## Known hangs", 1)[1].split("\n## ", 1)[0]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    f = tmp_path / "readme.toml"
    f.write_text(example)
    entries, updated = cat.load_file(f)
    assert [e.id for e in entries] == ["vllm-52247-async-output-event-wait"] and updated.isoformat() == "2026-12-01"
    assert entries[0].conditions[0].required and entries[0].upstream[1].kind == "pr"


def test_fault_records_among_the_runs_events_count_and_the_detectors_stall_does_not(tmp_path: Path,
                                                                                   shipped: cat.Catalogue) -> None:
    """stress writes its own `stall` event (with a class) to events.jsonl; only the plugin's records (with a pid
    and a kind) say what was injected."""
    b = bundle_of("vllm-52247-v1-runner", tmp_path)
    ev = b / "context" / "events.jsonl"
    ev.write_text(json.dumps({"t": 30.0, "event": "stall", "class": "engine-stall", "since": 10.0}) + "\n")
    assert matched_ids(b, shipped) == ["vllm-52247-async-output-event-wait"]
    with ev.open("a") as f:
        f.write(json.dumps({"t": 1.0, "event": "stall", "kind": "gpu-hang", "pid": 101}) + "\n")
    assert matched_ids(b, shipped) == ["repro-injected-gpu-hang"]  # and no upstream entry
    with ev.open("a") as f:
        f.write(json.dumps({"t": 2.0, "event": "released", "pid": 101}) + "\n")
    assert matched_ids(b, shipped) == ["vllm-52247-async-output-event-wait"]


def test_repro_issue_refuses_a_malformed_catalogue_in_the_environment(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(LOCAL.replace('status = "unreported"', 'status = "maybe"'))
    monkeypatch.setenv(cat.ENV, str(f))
    with pytest.raises(SystemExit) as ei:
        main(["issue", str(TRACES / "scheduler-stall"), "--out", str(tmp_path / "ISSUE.md")])
    assert ei.value.code == 2 and "bad.toml: entry 'site-nfs-write': field 'status'" in capsys.readouterr().err
