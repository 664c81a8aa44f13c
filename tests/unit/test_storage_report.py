"""Issue 8: a storage finding is its own report (what leaks, under which client behaviour, how fast), never a hang;
and the timeline plot gains a storage panel when the run's timeline has the store's columns.

Bundles are the example trace's files (manifest, stacks, collect-env) with the storage context of a run put in:
a synthetic abort-heavy leak, and the recorded real run of tests/unit/data/storage-fill (a 4 MB store that
filled until the engine died of ENOSPC).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from repro.analyze.issue import STORAGE_TEMPLATE, find_template, render_issue, render_reports
from repro.analyze.report import timeline_figure, timeline_series
from repro.capture.request import CaptureRequest
from repro.cli import main
from repro.load.runner import TIMELINE_FIELDS
from tests.helpers_issue import check_report, fences_balanced, stdout_is_a_terminal

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "traces" / "write-stall"
FILL = Path(__file__).parent / "data" / "storage-fill"

LEAK_ACCOUNTING = {
    "path": "/dev/shm/hs", "files": 1480, "bytes": 37_000_000, "claimed_files": 12, "orphan_files": 1468,
    "orphan_bytes": 36_700_000, "pending_files": 30, "oldest_orphan_age_s": 118.0, "fs_free_bytes": 63_000_000,
    "fs_total_bytes": 100_000_000, "fs_free_inodes": 900_000, "fs_total_inodes": 1_000_000, "claims_made": 4021,
    "rates": {"orphan_files_per_s": 12.4, "orphan_bytes_per_s": 310_000.0, "used_bytes_per_s": 300_000.0,
              "window_s": 120.0},
    "projected_seconds_to_full": 210.0, "projected_seconds_to_no_inodes": None,
    "warnings": {"storage-leak": {"first_s": 61.2, "count": 9, "message": "1468 hidden-state files ... keep growing",
                                  "evidence": {"orphan_files": 1468}},
                 "storage-exhaustion": {"first_s": 64.0, "count": 3, "message": "runs out of space in about 4 min",
                                        "evidence": {"seconds_to_full": 210.0}}},
    "orphan_sample": [{"name": "cmpl-abc-0.safetensors", "bytes": 25_000, "age_s": 118.0}],
    "growth_curve": [{"t": 1.7e9 + i, "files": 10 * i, "bytes": 250_000 * i, "orphan_files": 10 * i,
                      "orphan_bytes": 250_000 * i, "fs_free_bytes": 100_000_000 - 250_000 * i,
                      "fs_free_inodes": 10**6 - 10 * i} for i in range(0, 120, 10)],
}
LEAK_EVENTS = [
    {"t": 12.0, "event": "abort-storm", "evidence": {"window_s": 10.0, "aborted": 310, "completed": 9,
                                                      "abort_share": 0.9718, "goodput_per_s": 0.9, "aborts_per_s": 31.0}},
    {"t": 61.2, "event": "storage-leak", "message": "1468 hidden-state files ... keep growing",
     "evidence": {"orphan_files": 1468}},
]
ABORTY_LOAD = {"request_timeout": 0.08, "retries": 0, "consume": "delete", "concurrency": 32, "rate": None,
               "workload": "hidden-states"}


def bundle(tmp_path: Path, detection: dict[str, Any] | None, storage: dict[str, Any] | None,
           events: list[dict[str, Any]], load: dict[str, Any] | None = None) -> Path:
    b = tmp_path / "bundle-001"
    shutil.copytree(TRACE, b)
    ctx = b / "context"
    if detection is not None:
        (ctx / "detection.json").write_text(json.dumps(detection))
    if storage is not None:
        (ctx / "storage.json").write_text(json.dumps(storage))
    (ctx / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if load is not None:
        (ctx / "scenario.json").write_text(json.dumps({"load": load}))
    return b


def reports(b: Path) -> dict[str, str]:
    return render_reports(b, find_template(), find_template(None, STORAGE_TEMPLATE))


def not_a_hang(md: str) -> None:
    for hang in ("stops making progress", "Stuck threads", "Time to stall", "engine went quiet", "Stack signature"):
        assert hang not in md, hang


def storage_only(b: Path) -> str:
    """The bundle's one report, a storage report worded as no hang."""
    out = reports(b)
    assert list(out) == ["storage"]
    not_a_hang(out["storage"])
    check_report(out["storage"])
    return out["storage"]


def test_a_leak_under_an_abort_heavy_client_is_a_storage_report_with_behaviour_pace_and_census(tmp_path: Path) -> None:
    b = bundle(tmp_path, None, {"path": "/dev/shm/hs", "bytes_free": 63_000_000, "accounting": LEAK_ACCOUNTING},
               LEAK_EVENTS, ABORTY_LOAD)
    md = storage_only(b)
    assert md.splitlines()[0] == ("# [Bug]: hidden-state files of aborted requests are never deleted: 1468 files no "
                                  "response named pile up at 744 files/min")
    assert "including requests the client aborted" in md and "nothing deletes them" in md  # what leaks
    assert "Client timeout per request: 0.08 s, retries: 0, concurrency 32" in md  # under which behaviour
    assert "Consume policy of the files the client was given: `delete`" in md
    assert "310 of 319 requests ended in client timeouts within 10.0 s" in md
    assert "12.40 files/s (744/min), 310 kB/s" in md and "Projected full in about 4 min" in md  # how fast
    assert "| orphaned (never named in a response) | 1468 |" in md and "| orphaned bytes | 36.7 MB |" in md
    assert "| claimed by a response | 12 |" in md and "`cmpl-abc-0.safetensors`" in md
    assert "`storage-exhaustion` at 64.0 s" in md and "`storage-leak` at 61.2 s" in md
    assert "{{" not in md and "<!--" not in md and fences_balanced(md)
    assert "### Your current environment" in md and "vLLM Version" in md


def test_a_leak_found_by_events_alone_still_reports_the_numbers_they_carry(tmp_path: Path) -> None:
    """`repro capture RUN_DIR` of a stress run: events, no client census in storage.json."""
    events = [{"t": 61.2, "event": "storage-leak", "message": "m",
               "evidence": {"orphan_files": 300, "orphan_bytes": 7_500_000, "orphan_files_per_s": 2.5,
                            "orphan_bytes_per_s": 62_500.0, "oldest_orphan_age_s": 90.0}}]
    md = storage_only(bundle(tmp_path, None, None, events, ABORTY_LOAD))
    assert "300 files no response named pile up at 150 files/min" in md.splitlines()[0]
    assert "| orphaned bytes | 7.5 MB |" in md and "2.50 files/s" in md


def test_a_genuine_stall_with_a_leak_gets_two_separate_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    b = bundle(tmp_path, {"class": "engine-stall", "evidence": {}}, {"accounting": LEAK_ACCOUNTING}, LEAK_EVENTS,
               ABORTY_LOAD)
    out = reports(b)
    assert list(out) == ["stall", "storage"]
    assert "stops making progress" in out["stall"].splitlines()[0] and "Stuck threads" in out["stall"]
    assert "orphaned" not in out["stall"]
    assert "beside the stall report" in out["storage"]
    not_a_hang(out["storage"])
    with pytest.raises(SystemExit) as ei, stdout_is_a_terminal():
        main(["issue", str(b)])
    assert ei.value.code == 0
    assert (b / "ISSUE.md").read_text() == out["stall"]
    assert (b / "ISSUE-storage.md").read_text() == out["storage"]
    assert capsys.readouterr().out.split() == [str(b / "ISSUE.md"), str(b / "ISSUE-storage.md")]


def test_a_bundle_without_a_storage_finding_renders_the_stall_report_as_before(tmp_path: Path) -> None:
    out = reports(TRACE)
    assert list(out) == ["stall"]
    assert out["stall"] == render_issue(TRACE, find_template())


def test_the_recorded_real_storage_death_is_worded_as_a_storage_failure_with_its_warning_and_pace(tmp_path: Path
                                                                                                 ) -> None:
    b = bundle(tmp_path, json.loads((FILL / "detection.json").read_text()), None,
               [json.loads(x) for x in (FILL / "events.jsonl").read_text().splitlines()],
               json.loads((FILL / "scenario.json").read_text())["load"])
    md = storage_only(b)
    assert md.splitlines()[0] == ("# [Bug]: EngineCore dies when the hidden-state store fails (no-space in the "
                                  "hidden-state write)")
    assert "No space left on device (os error 28)" in md
    assert "`storage-exhaustion` at 7.087 s" in md  # warned 22 s before the death
    assert "The filesystem fills at 163 kB/s" in md and "Projected full in about 19 s" in md
    assert "| filesystem free | 3.1 MB |" in md
    assert "Client timeout per request: 120 s, retries: 3, concurrency 8, Poisson rate 5/s" in md
    assert "`keep`" in md


# -- the timeline plot --------------------------------------------------------------------------------------------

def test_stress_timeline_has_the_store_columns() -> None:
    assert TIMELINE_FIELDS[-3:] == ["orphan_files", "store_bytes", "fs_free_bytes"]
    header = (FILL / "timeline.csv").read_text().splitlines()[0].split(",")
    assert header == TIMELINE_FIELDS  # the recorded run was written by this writer


def test_the_plot_gains_a_storage_panel_from_the_real_runs_timeline_columns(tmp_path: Path) -> None:
    series = timeline_series(CaptureRequest(out_dir=tmp_path, timeline_csv=FILL / "timeline.csv"), [])
    assert series["store_bytes"][0] == 134920 and series["fs_free_bytes"][0] == 4042752
    fig = timeline_figure(series, None, "t")
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["server requests", "tokens/s", "completed", "store MB", "orphans"]  # + the twin axis
    lines = {ln.get_label() for ax in fig.axes for ln in ax.get_lines()}
    assert {"hidden-state files (MB)", "filesystem free (MB)", "orphaned files"} <= lines


def test_the_plot_keeps_three_panels_without_storage_columns(tmp_path: Path) -> None:
    csv = tmp_path / "timeline.csv"
    fields = [f for f in TIMELINE_FIELDS if f not in ("orphan_files", "store_bytes", "fs_free_bytes")]
    rows = (FILL / "timeline.csv").read_text().splitlines()
    idx = [rows[0].split(",").index(f) for f in fields]
    csv.write_text("\n".join(",".join(r.split(",")[i] for i in idx) for r in rows) + "\n")
    fig = timeline_figure(timeline_series(CaptureRequest(out_dir=tmp_path, timeline_csv=csv), []), None, "t")
    assert [ax.get_ylabel() for ax in fig.axes] == ["server requests", "tokens/s", "completed"]
    empty = tmp_path / "empty.csv"  # a store that was never censused: the columns are there but blank
    empty.write_text("\n".join(r if i == 0 else ",".join(r.split(",")[:-3] + ["", "", ""])
                               for i, r in enumerate(rows)) + "\n")
    fig = timeline_figure(timeline_series(CaptureRequest(out_dir=tmp_path, timeline_csv=empty), []), None, "t")
    assert len(fig.axes) == 3


def test_without_storage_columns_the_runs_census_curve_gives_the_storage_panel(tmp_path: Path) -> None:
    ms = [{"t": 1.7e9 + i, "vllm:num_requests_running": 2.0} for i in range(5)]
    req = CaptureRequest(out_dir=tmp_path, storage_accounting=LEAK_ACCOUNTING)
    series = timeline_series(req, ms)
    assert series["orphan_files"][-1] == 1100 and len(series["storage_t"]) == 12
    assert len(timeline_figure(series, None, "t").axes) == 5


def test_a_dead_server_with_no_metrics_still_gets_the_storage_panel_from_the_census(tmp_path: Path) -> None:
    series = timeline_series(CaptureRequest(out_dir=tmp_path, storage_accounting=LEAK_ACCOUNTING), [])
    assert series["t"] == series["storage_t"] and "running" not in series
    fig = timeline_figure(series, None, "t")
    assert [ax.get_ylabel() for ax in fig.axes][-2:] == ["store MB", "orphans"]


def test_a_watch_exhaustion_warning_alone_is_a_storage_report_about_the_store_filling(tmp_path: Path) -> None:
    events = [{"t": 1.7e9, "event": "watch-start"},
              {"t": 1.7e9 + 50, "event": "storage-warning", "kind": "storage-exhaustion", "message": "runs out",
               "evidence": {"seconds_to_full": 1500.0, "fs_free_bytes": 3_000_000_000, "used_bytes_per_s": 2e6}}]
    md = storage_only(bundle(tmp_path, None, None, events))
    assert md.splitlines()[0] == ("# [Bug]: hidden-state store fills up under extraction load (full in about 25 min "
                                  "at the measured pace)")
    assert "other clients (repro watch sends no load)" in md and "Client timeout" not in md
    assert "The filesystem fills at 2.0 MB/s" in md and "| filesystem free | 3.00 GB |" in md
