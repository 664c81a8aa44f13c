"""`repro analyze` on the example bundles of traces/ (real vLLM stalls on CPU, see traces/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repro.bundle.reader import open_bundle
from repro.analyze.stacks import analyze_bundle_dir
from repro.cli import main

TRACES = Path(__file__).resolve().parents[2] / "traces"


def test_scheduler_stall_trace_is_engine_core_blocked_in_the_injected_frame() -> None:
    a = analyze_bundle_dir(TRACES / "scheduler-stall")
    assert a["stuck_process"] == "EngineCore" and a["verdict"] == "blocked"
    assert a["stuck_frame"].startswith("repro_injected_scheduler_stall (")
    assert a["culprit"]["process"] == "EngineCore"


def test_write_stall_trace_points_at_the_worker_in_the_write() -> None:
    """On CPU the hidden-state write runs in the Worker; EngineCore waits for it in the shm ring."""
    a = analyze_bundle_dir(TRACES / "write-stall")
    assert a["verdict"] == "blocked" and "shm_broadcast.py" in a["stuck_frame"]
    assert a["culprit"]["process"] == "Worker"
    assert a["culprit"]["stuck_frame"].startswith("repro_injected_write_stall (")


def test_stored_analysis_matches_a_fresh_one_and_signatures_differ() -> None:
    """analysis.json written at capture time equals what analysis computes from the files today."""
    sigs = []
    for name in ("scheduler-stall", "write-stall"):
        stored = json.loads((TRACES / name / "analysis.json").read_text())
        fresh = analyze_bundle_dir(TRACES / name)
        assert stored["signature"] == fresh["signature"]
        sigs.append(fresh["signature"])
    assert sigs[0] != sigs[1]


def test_tarball_and_directory_of_a_trace_are_the_same_bundle(tmp_path: Path) -> None:
    d = open_bundle(TRACES / "scheduler-stall.tar.gz", tmp_path)
    assert analyze_bundle_dir(d)["signature"] == analyze_bundle_dir(TRACES / "scheduler-stall")["signature"]


def test_repro_analyze_prints_verdicts_and_groups_by_signature(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["analyze", str(TRACES / "scheduler-stall"), str(TRACES / "scheduler-stall.tar.gz"),
              str(TRACES / "write-stall")])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert "EngineCore blocked in repro_injected_scheduler_stall" in out
    assert "2 distinct signature(s):" in out
    sched_sig = analyze_bundle_dir(TRACES / "scheduler-stall")["signature"]
    assert f"{sched_sig}: 2 bundle(s)" in out


def test_moving_token_counters_overrule_stacks_that_look_stuck(tmp_path: Path) -> None:
    """GIVEN the scheduler-stall bundle WHEN its /metrics samples show tokens being generated THEN the bundle
    verdict is progressing (a loaded healthy engine can sit in the same wait in every sample)."""
    import shutil

    d = tmp_path / "b"
    shutil.copytree(TRACES / "scheduler-stall", d)
    rows = [json.loads(x) for x in (d / "context/metrics-samples.jsonl").read_text().splitlines()]
    rows[-1]["vllm:generation_tokens_total"] += 500
    (d / "context/metrics-samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = analyze_bundle_dir(d)
    assert a["verdict"] == "progressing" and "advanced by 500" in a["verdict_reason"]
    assert a["culprit"] is None
    assert a["processes"][0]["verdict"] == "blocked"  # the per-process stack verdict is kept
