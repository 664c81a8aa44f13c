"""Storage accounting: orphans are files nobody was told about; reaping never leaves the storage path."""

import os
import time

import pytest

from repro.errors import UsageError
from repro.storage.causes import storage_cause
from repro.storage.census import StorageCensus
from repro.storage.projection import project
from repro.storage.reaper import reap_orphans


def make(dirpath, name, size=100, age=0.0, lock=False):
    p = dirpath / name
    p.write_bytes(b"x" * size)
    t = time.time() - age
    os.utime(p, (t, t))
    if lock:
        (dirpath / (name + ".lock")).write_bytes(b"")
    return p


def test_unclaimed_files_older_than_grace_are_orphans(tmp_path):
    c = StorageCensus.open(tmp_path, grace=10)
    make(tmp_path, "a.safetensors", age=60, lock=True)
    make(tmp_path, "b.safetensors", age=60)
    make(tmp_path, "c.safetensors", age=1)
    c.claim(str(tmp_path / "b.safetensors"))
    s = c.scan()
    assert (s.files, s.claimed_files, s.orphan_files, s.pending_files, s.lock_files) == (3, 1, 1, 1, 1)
    assert s.orphan_bytes == 100 and s.oldest_orphan_age >= 59
    assert [n for n, _, _ in c.orphans()] == ["a.safetensors"]


def test_a_claim_that_arrives_before_the_file_still_counts(tmp_path):
    """vLLM >= 0.22 writes after the response: the path is claimed before the file exists."""
    c = StorageCensus.open(tmp_path, grace=0)
    c.claim(str(tmp_path / "late.safetensors"))
    c.scan()
    make(tmp_path, "late.safetensors", age=5)
    assert c.scan().orphan_files == 0


def test_rescans_only_stat_new_files_and_forget_consumed_ones(tmp_path):
    c = StorageCensus.open(tmp_path, grace=0)
    for i in range(50):
        make(tmp_path, f"f{i}.safetensors")
    assert c.scan().new_stats == 50
    make(tmp_path, "g.safetensors")
    (tmp_path / "f0.safetensors").unlink()
    s = c.scan()
    assert s.new_stats == 1 and s.files == 50
    assert "f0.safetensors" not in c._known


def test_missing_or_unreadable_storage_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such directory"):
        StorageCensus.open(tmp_path / "nope")


def test_projection_finds_the_time_until_full(tmp_path):
    from repro.storage.census import CensusSnapshot

    def snap(t, free, orphans):
        return CensusSnapshot(t, 0, 0, 0, 0, 0, orphans, orphans * 10, 0, None, free, 10_000, 100, 100, 0.0, 0)

    hist = [snap(t, 10_000 - 10 * t, t) for t in range(0, 100, 10)]
    p = project(hist, window=300)
    assert p.used_bytes_per_s == pytest.approx(10)
    assert p.seconds_to_full == pytest.approx((10_000 - 900) / 10)
    assert p.orphan_files_per_s == pytest.approx(1)
    flat = project([snap(t, 5000, 3) for t in range(0, 100, 10)])
    assert flat.seconds_to_full is None and flat.orphan_files_per_s == 0


def test_reaping_deletes_old_orphans_and_their_locks_only(tmp_path):
    c = StorageCensus.open(tmp_path, grace=0)
    make(tmp_path, "old.safetensors", age=600, lock=True)
    make(tmp_path, "young.safetensors", age=5)
    make(tmp_path, "claimed.safetensors", age=600)
    c.claim("claimed.safetensors")
    c.scan()
    logged = []
    r = reap_orphans(c, older_than=300, log=logged.append)
    assert r.deleted == ["old.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["claimed.safetensors", "young.safetensors"]
    assert "deleting orphan" in logged[0]


def test_dry_run_deletes_nothing(tmp_path):
    c = StorageCensus.open(tmp_path, grace=0)
    make(tmp_path, "old.safetensors", age=600)
    c.scan()
    assert reap_orphans(c, older_than=1, dry_run=True).deleted == ["old.safetensors"]
    assert os.listdir(tmp_path) == ["old.safetensors"]


def test_reaping_never_follows_a_symlink_out_of_the_storage_path(tmp_path):
    store, outside = tmp_path / "store", tmp_path / "precious"
    store.mkdir()
    outside.mkdir()
    victim = make(outside, "victim.safetensors", age=600)
    (store / "link.safetensors").symlink_to(victim)
    os.utime(store / "link.safetensors", (time.time() - 600,) * 2, follow_symlinks=False)
    c = StorageCensus.open(store, grace=0)
    c.scan()
    r = reap_orphans(c, older_than=1)
    assert victim.exists() and (store / "link.safetensors").is_symlink()
    assert r.deleted == [] and r.skipped[0][0] == "link.safetensors"


@pytest.mark.parametrize("line, kind", [
    ("safetensors_rust.SafetensorError: Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
     "message: \"No space left on device\" })", "no-space"),
    ("OSError: [Errno 30] Read-only file system: '/dev/shm/hs/x.safetensors'", "read-only"),
])
def test_storage_causes_are_named_from_the_log(line, kind):
    log = "(EngineCore pid=1) ERROR ... save_file(tensors, filename)\n" + line + "\nEngineDeadError"
    cause = storage_cause(log)
    assert cause["kind"] == kind and cause["in_hidden_state_write"] == "yes"
    assert storage_cause("all good\nINFO Avg prompt throughput: 1.0 tokens/s") is None


def _snap(t, orphans, free, inodes=1000):
    from repro.storage.census import CensusSnapshot

    return CensusSnapshot(t, orphans, orphans * 100, 0, 0, 0, orphans, orphans * 100, 0, 60.0, free, 10**9,
                          inodes, 10**6, 0.001, 0)


def test_growing_orphans_are_a_storage_leak_and_a_steady_count_is_not(tmp_path):
    from repro.storage.projection import project
    from repro.storage.alerts import StorageWatch

    w = StorageWatch(StorageCensus.open(tmp_path), leak_window=60, min_orphans=10)
    growing = [_snap(t, 10 + t, 10**9) for t in range(0, 70, 10)]
    kinds = [x.kind for x in w.assess(growing, project(growing, 60))]
    assert kinds == ["storage-leak"]
    steady = [_snap(t, 50, 10**9) for t in range(0, 70, 10)]
    assert w.assess(steady, project(steady, 60)) == []


def test_a_store_projected_full_within_the_horizon_is_storage_exhaustion(tmp_path):
    from repro.storage.projection import project
    from repro.storage.alerts import StorageWatch

    w = StorageWatch(StorageCensus.open(tmp_path), horizon=1800)
    filling = [_snap(t, 0, 10**6 - 600 * t) for t in range(0, 70, 10)]  # 600 B/s: about 27 min left
    warn = w.assess(filling, project(filling, 60))
    assert [x.kind for x in warn] == ["storage-exhaustion"]
    assert warn[0].evidence["seconds_to_full"] < 1800
    slow = [_snap(t, 0, 10**9 - 500 * t) for t in range(0, 70, 10)]  # years left
    assert w.assess(slow, project(slow, 60)) == []


def test_scans_are_rate_limited(tmp_path):
    from repro.storage.alerts import StorageWatch

    w = StorageWatch(StorageCensus.open(tmp_path), min_interval=60)
    w.poll()
    assert not w.due()
    n = len(w.census.history)
    w.poll()
    assert len(w.census.history) == n
    w.poll(force=True)
    assert len(w.census.history) == n + 1
