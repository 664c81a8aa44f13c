"""watch's storage duty: warnings once per episode, the hook told, reaping only old files inside the store."""

import os
import time

from repro.storage.census import CensusSnapshot
from repro.storage.alerts import StorageWatch
from repro.watch.storage_duty import StorageDuty


def old_file(d, name, age):
    p = d / name
    p.write_bytes(b"x" * 10)
    t = time.time() - age
    os.utime(p, (t, t))
    return p


def snap(t, orphans, free):
    return CensusSnapshot(t, orphans, orphans * 10, 0, 0, 0, orphans, orphans * 10, 0, 60.0, free, 10**9, 10**6,
                          10**6, 0.0, 0)


def test_a_warning_is_reported_once_per_episode_with_the_hook_and_cleared_after(tmp_path):
    events, hooks, counted = [], [], []
    sw = StorageWatch.open(tmp_path, grace=0, min_interval=0)
    duty = StorageDuty(sw, lambda e, **f: events.append((e, f)), hooks.append, counted.append)
    # a store filling at 1 MB/s with 100 MB left: exhaustion within the 30 min horizon
    sw.census.history.extend(snap(t, 0, 100_000_000 - 1_000_000 * t) for t in range(0, 60, 10))
    sw.census.scan = lambda now=None: sw.census.history[-1]  # replay: no new scan
    duty.tick(force=True)
    duty.tick(force=True)
    assert [e for e, _ in events] == ["storage-warning"]
    assert events[0][1]["kind"] == "storage-exhaustion" and counted == ["storage-exhaustion"]
    assert hooks[0]["REPRO_STORAGE_WARNING"] == "storage-exhaustion"
    sw.census.history.clear()
    sw.census.history.extend(snap(t, 0, 100_000_000) for t in range(100, 160, 10))
    duty.tick(force=True)
    assert events[-1] == ("storage-ok", {"kind": "storage-exhaustion"})


def test_reaping_deletes_only_files_older_than_the_limit_and_logs_each(tmp_path):
    store, outside = tmp_path / "store", tmp_path / "outside"
    store.mkdir()
    outside.mkdir()
    old_file(store, "a.safetensors", 900)
    old_file(store, "b.safetensors", 10)
    victim = old_file(outside, "v.safetensors", 900)
    (store / "link.safetensors").symlink_to(victim)
    os.utime(store / "link.safetensors", (time.time() - 900,) * 2, follow_symlinks=False)
    events = []
    duty = StorageDuty(StorageWatch.open(store, grace=60, min_interval=0), lambda e, **f: events.append((e, f)),
                       reap_older_than=600)
    duty.tick(force=True)
    assert sorted(os.listdir(store)) == ["b.safetensors", "link.safetensors"]
    assert victim.exists()
    reaps = [f["message"] for e, f in events if e == "reap"]
    assert len(reaps) == 1 and "a.safetensors" in reaps[0]
    done = [f for e, f in events if e == "reap-done"][0]
    assert done["files"] == 1 and "link.safetensors" in done["skipped"][0]


def test_dry_run_lists_but_deletes_nothing(tmp_path):
    old_file(tmp_path, "a.safetensors", 900)
    events = []
    duty = StorageDuty(StorageWatch.open(tmp_path, grace=60, min_interval=0), lambda e, **f: events.append((e, f)),
                       reap_older_than=600, reap_dry_run=True)
    duty.tick(force=True)
    assert os.listdir(tmp_path) == ["a.safetensors"]
    assert "would delete" in [f["message"] for e, f in events if e == "reap"][0]


def test_the_watch_loop_reaps_old_files_of_a_healthy_server_without_restarting_it(tmp_path):
    """GIVEN `repro watch --storage S --reap-orphans-older-than 10m` on a healthy server and a 15-min-old file in S
    WHEN the watch runs THEN the file is reaped (an event says so) and the server is never touched."""
    from repro.errors import EXIT_OK
    from repro.watch.events import read_events
    from tests.helpers_watch import Clock, FakeTarget, make

    store, run = tmp_path / "store", tmp_path / "run"
    store.mkdir()
    run.mkdir()
    old_file(store, "stale.safetensors", 900)
    old_file(store, "fresh.safetensors", 5)
    clock = Clock()
    target = FakeTarget(clock, healthy_for=None)
    sup = make(run, target, clock, duration=60, storage_duty=True, storage_path=str(store), reap_older_than=600)
    assert sup.run() == EXIT_OK
    assert os.listdir(store) == ["fresh.safetensors"]
    ev = read_events(run / "events.jsonl")
    assert any(e["event"] == "reap" and "stale.safetensors" in e["message"] for e in ev)
    assert not any(e["event"] in ("detect", "stop") for e in ev)


def test_reaping_without_a_storage_path_is_one_usage_line(capsys):
    import pytest

    from repro.cli import main

    with pytest.raises(SystemExit) as ei:
        main(["watch", "--url", "http://127.0.0.1:9", "--restart-cmd", "true", "--reap-orphans-older-than", "1h"])
    assert ei.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: --reap-orphans-older-than, --reap-dry-run and --on-storage "
                                               "need --storage PATH")
