"""One events writer for stress and watch: a first line that says what `t` is, then numbered events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repro.errors import UsageError
from repro.monitor.events import SCHEMA, EventLog, epoch_of, read_events
from repro.watch.events import EventLog as WatchEventLog


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_the_first_line_names_the_schema_the_origin_and_what_t_means(tmp_path: Path) -> None:
    """Line 1: schema repro.events, version 2, origin (epoch) and t_is; then seq 1.. with t since the origin."""
    wall = Clock(1_700_000_000.0)
    log = EventLog(tmp_path / "events.jsonl", wall=wall, t_is="the load start")
    wall.t += 2.5
    log.write("start", url="http://x")
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    head, ev = lines
    assert (head["schema"], head["version"], head["event"], head["origin"]) == (SCHEMA, 2, "events", 1_700_000_000.0)
    assert "seconds since origin (the load start)" in head["t_is"]
    assert (ev["seq"], ev["t"], ev["event"], ev["url"]) == (1, 2.5, "start", "http://x")
    assert ev["wall"] == "2023-11-14T22:13:22.500Z"
    assert read_events(tmp_path / "events.jsonl") == [ev]  # readers get the events, not the first line


def test_epoch_of_reads_every_version_as_epoch_seconds(tmp_path: Path) -> None:
    """v2: origin + t; an earlier watch: t was epoch already; an earlier stress: t relative, wall ISO."""
    wall = Clock(1_700_000_000.0)
    log = WatchEventLog(tmp_path / "w.jsonl", wall=wall)
    wall.t += 10.0
    log.write("detect")
    log.close()
    v2 = [json.loads(x) for x in (tmp_path / "w.jsonl").read_text().splitlines()]
    assert "the watch start" in v2[0]["t_is"]
    assert [e["t"] for e in epoch_of(v2)] == [1_700_000_010.0]
    old_watch = [{"seq": 1, "t": 1_700_000_010.0, "time": "2023-11-14T22:13:30.000Z", "event": "detect"}]
    assert [e["t"] for e in epoch_of(old_watch)] == [1_700_000_010.0]
    old_stress = [{"t": 10.0, "wall": "2023-11-14T22:13:30.000Z", "event": "stall"}]
    assert [e["t"] for e in epoch_of(old_stress)] == [1_700_000_010.0]


def test_a_future_events_file_is_a_one_line_error(tmp_path: Path) -> None:
    """A first line with a version this repro does not know: UsageError naming the upgrade, no traceback."""
    p = tmp_path / "events.jsonl"
    p.write_text(json.dumps({"schema": SCHEMA, "version": 99, "event": "events"}) + "\n")
    with pytest.raises(UsageError, match="newer than this repro reads"):
        read_events(p)
