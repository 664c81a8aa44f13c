"""The watch's timeline.csv: what each evaluation saw, bounded in size.

Contract: the first evaluation is written at once (whatever the monotonic clock reads), then at
most one row every `every` seconds, except that a change of the detector's state is always
written; `server` numbers the servers watched; a missing /metrics reading leaves the server
columns empty and names the error. The analyze plotter reads it like stress's timeline.csv.
"""

from __future__ import annotations

import csv
from pathlib import Path

from repro.analyze.report import series_from_timeline_csv
from repro.monitor.detector import Assessment, Observation
from repro.monitor.metrics import MetricsSample
from repro.watch.timeline import FIELDS, WatchTimeline


def ob(t: float, running: float | None = 4.0, tokens: float = 100.0) -> Observation:
    m = None if running is None else MetricsSample(running=running, waiting=1.0, kv_usage=0.02, prompt_tokens=tokens,
                                                   generation_tokens=tokens / 10, request_success=tokens / 20)
    return Observation(t, m, None if m else "refused")


def a(t: float, state: str = "healthy", changed: bool = False) -> Assessment:
    return Assessment(state, "engine-stall" if state != "healthy" else None, None, t, changed, True)


def test_rows_are_rate_limited_but_every_state_change_is_kept(tmp_path: Path) -> None:
    wall = iter(range(1_800_000_000, 1_800_000_100))
    tl = WatchTimeline(tmp_path / "timeline.csv", every=5.0, wall=lambda: float(next(wall)))
    base = 7.0  # a machine booted seven seconds ago
    written = [tl.record(ob(base + i), a(base + i), 1) for i in range(12)]  # one evaluation a second
    assert written == [True, False, False, False, False, True, False, False, False, False, True, False]
    assert tl.record(ob(base + 12, running=4.0, tokens=100.0), a(base + 12, "suspect", changed=True), 1)
    assert tl.record(ob(base + 13, running=None), a(base + 13, "stalled", changed=True), 1)
    assert tl.record(ob(base + 30), a(base + 30, "healthy", changed=True), 2)
    tl.close()
    rows = list(csv.DictReader(open(tmp_path / "timeline.csv")))
    assert list(rows[0]) == FIELDS
    assert [r["state"] for r in rows] == ["healthy"] * 3 + ["suspect", "stalled", "healthy"]
    assert [r["server"] for r in rows][-1] == "2"
    assert rows[0]["t"] == "0.0" and rows[-1]["t"] == "30.0"
    assert rows[4]["server_running"] == "" and rows[4]["metrics_error"] == "refused"
    series = series_from_timeline_csv(tmp_path / "timeline.csv")
    assert series is not None and series["t"][0] == 1_800_000_000 and series["running"][0] == 4.0
    assert "gen_tps" in series and "completed" in series
