"""One storage-warning episode tracker and one event vocabulary for stress and watch."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from repro.load.store import StoreAccounting
from repro.storage.census import CensusSnapshot
from repro.storage.episodes import BEGIN, END, WarningEpisodes
from repro.storage.alerts import StorageWarning, StorageWatch
from repro.watch.storage_duty import StorageDuty

LEAK = StorageWarning("storage-leak", "files pile up", {"orphan_files": 12})
FULL = StorageWarning("storage-exhaustion", "runs out of space", {"seconds_to_full": 90.0})


def test_a_warning_that_holds_on_many_scans_is_one_episode_with_its_counts() -> None:
    """Three scans with the leak, then one without: began once, ended once; first/last seen and the scan count kept."""
    ep = WarningEpisodes()
    assert [w.kind for w in ep.update([LEAK], 10.0).began] == ["storage-leak"]
    assert ep.update([LEAK, FULL], 20.0).began == [FULL]
    change = ep.update([LEAK], 30.0)
    assert change.began == [] and change.ended == ["storage-exhaustion"]
    assert ep.update([], 40.0).ended == ["storage-leak"]
    assert ep.seen["storage-leak"] == {"first_s": 10.0, "last_s": 30.0, "count": 3, "message": "files pile up",
                                       "evidence": {"orphan_files": 12}}
    assert ep.seen["storage-exhaustion"]["count"] == 1 and ep.active == set()


def snap(t: float, free: float) -> CensusSnapshot:
    return CensusSnapshot(t, 0, 0, 0, 0, 0, 0, 0, 0, 60.0, free, 10**9, 10**6, 10**6, 0.0, 0)


def filling_store(tmp_path: Path, free_after: float | None = None) -> StorageWatch:
    """A replayed store filling at 1 MB/s with 100 MB left (exhaustion within the 30 min horizon)."""
    sw = StorageWatch.open(tmp_path, grace=0, min_interval=0)
    sw.census.history.extend(snap(t, 100_000_000 - 1_000_000 * t) for t in range(0, 60, 10))
    sw.census.scan = lambda now=None: dataclasses.replace(sw.census.history[-1])  # type: ignore[method-assign]
    return sw


def cleared(sw: StorageWatch) -> None:
    sw.census.history.clear()
    sw.census.history.extend(snap(t, 100_000_000) for t in range(100, 160, 10))


def test_stress_and_watch_write_the_same_storage_events_for_the_same_store(tmp_path: Path) -> None:
    """The same store seen by stress and by watch: the same event names and fields (storage-warning, storage-ok)."""
    got: dict[str, list[tuple[str, dict[str, Any]]]] = {"stress": [], "watch": []}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sw_s, sw_w = filling_store(tmp_path / "a"), filling_store(tmp_path / "b")
    stress = StoreAccounting(sw_s, lambda e, **f: got["stress"].append((e, f)), lambda msg: None, lambda t: t)
    watch = StorageDuty(sw_w, lambda e, **f: got["watch"].append((e, f)))
    for _ in range(2):
        asyncio.run(stress.poll(force=True))
        watch.tick(force=True)
    cleared(sw_s)
    cleared(sw_w)
    asyncio.run(stress.poll(force=True))
    watch.tick(force=True)
    for side in ("stress", "watch"):
        names = [e for e, _ in got[side]]
        assert names == [BEGIN, END], (side, names)
        begin, end = got[side][0][1], got[side][1][1]
        assert begin["kind"] == "storage-exhaustion" and begin["evidence"]["seconds_to_full"] < 1800
        assert set(begin) == {"kind", "message", "evidence", "path"} and end == {"kind": "storage-exhaustion"}
    assert stress.summary()["warnings"]["storage-exhaustion"]["count"] == 2  # type: ignore[index]


def test_a_bundle_gets_one_storage_accounting_from_stress_and_from_watch(tmp_path: Path) -> None:
    """The same store: stress's bundle accounting is watch's (same figures, curve, sample, warnings) plus the
    client's own counts (claims made, scans)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sw_s, sw_w = filling_store(tmp_path / "a"), filling_store(tmp_path / "b")
    stress = StoreAccounting(sw_s, lambda e, **f: None, lambda msg: None, lambda t: t)
    watch = StorageDuty(sw_w, lambda e, **f: None)
    asyncio.run(stress.poll(force=True))
    watch.tick(force=True)
    s, w = stress.accounting(), watch.accounting()
    assert s is not None
    assert set(s) - set(w) == {"scans", "scans_total", "scan_seconds_total", "scan_seconds_max", "claims_made"}
    assert set(w) <= set(s)
    for k in ("growth_curve", "rates", "projected_seconds_to_full", "orphan_files", "fs_free_bytes"):
        assert s[k] == w[k], k
    assert set(s["warnings"]) == set(w["warnings"]) == {"storage-exhaustion"}


def test_the_stress_runs_own_event_writer_takes_the_storage_warnings_kind_field(tmp_path: Path) -> None:
    """The stress run's event() accepts a field named `kind` (storage-warning's): the episode lands in events.jsonl."""
    from repro.load.runner import _Run
    from repro.monitor.events import read_events
    from tests.helpers_endpoint import stress_scenario

    run = _Run(stress_scenario("http://127.0.0.1:9"), tmp_path, None, "http://127.0.0.1:9", None)
    run.open_files()
    sw = filling_store(tmp_path)
    run.store.watch = sw
    try:
        asyncio.run(run.store.poll(force=True))
    finally:
        run.close_files()
    ev = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] == BEGIN]
    assert [e["kind"] for e in ev] == ["storage-exhaustion"]
