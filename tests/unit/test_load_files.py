"""Hidden-state file verification and consumption (FileChecker).

Contract: a file is verified against the prompt (token_ids equal, shape
[T, layers, hidden]); the .lock protocol is honoured (a reader waits for the
writer's LOCK_EX and takes LOCK_SH); after consumption neither the file nor its
.lock remains (delete, move:DIR) and keep never exceeds its byte budget; a file
that fails its check leaves the store: moved to the inspection directory while
within its budget, deleted otherwise; a file that never appears is reported, not
waited on forever.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from repro.hsfiles.checker import FileChecker


def make(dirpath: Path, name: str, tokens: list[int], layers: int = 2, hidden: int = 8, lock: bool = True) -> str:
    path = str(dirpath / f"{name}.safetensors")
    if lock:
        Path(path + ".lock").touch()
    save_file({"hidden_states": np.random.rand(len(tokens), layers, hidden).astype(np.float32),
               "token_ids": np.asarray(tokens, dtype=np.int64)}, path)
    return path


def test_verified_file_and_lock_are_deleted(tmp_path: Path) -> None:
    p = make(tmp_path, "a", [5, 6, 7])
    r = FileChecker("delete").check(p, (5, 6, 7))
    assert r.ok and r.consumed == "deleted" and r.shape == (3, 2, 8)
    assert os.listdir(tmp_path) == []


def test_token_mismatch_is_reported_and_the_file_removed(tmp_path: Path) -> None:
    p = make(tmp_path, "b", [5, 6, 7])
    r = FileChecker("keep").check(p, (5, 6, 8))
    assert not r.ok and r.error == "bad-tokens"
    assert os.listdir(tmp_path) == []


def test_failing_files_are_moved_for_inspection_within_the_budget(tmp_path: Path) -> None:
    store, bad = tmp_path / "store", tmp_path / "bad"
    store.mkdir()
    a, b = make(store, "a", [5, 6, 7]), make(store, "b", [5, 6, 7])
    size = os.path.getsize(a)
    fc = FileChecker("delete", bad_dir=bad, bad_budget=size + 1)
    ra, rb = fc.check(a, (1, 2, 3)), fc.check(b, (1, 2, 3))
    assert ra.error == rb.error == "bad-tokens"
    assert ra.kept_at == str(bad / "a.safetensors") and rb.kept_at is None
    assert os.listdir(store) == [] and os.listdir(bad) == ["a.safetensors"]
    assert fc.kept_bad() == {"dir": str(bad), "files": 1, "bytes": size, "budget_bytes": size + 1,
                             "deleted_over_budget": 1}


def test_bad_shape_is_reported(tmp_path: Path) -> None:
    path = str(tmp_path / "c.safetensors")
    save_file({"hidden_states": np.zeros((3, 8), np.float32), "token_ids": np.arange(3, dtype=np.int64)}, path)
    r = FileChecker().check(path, (0, 1, 2))
    assert not r.ok and r.error == "bad-shape"


def test_prefix_mode_accepts_generated_tokens_after_the_prompt(tmp_path: Path) -> None:
    p = make(tmp_path, "d", [5, 6, 7, 9, 9])
    assert FileChecker().check(p, (5, 6, 7), exact=False).ok


def test_missing_file_is_reported_after_the_wait(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = FileChecker(file_wait=0.3).check(str(tmp_path / "never.safetensors"), (1,))
    assert not r.ok and r.error == "file-missing"
    assert 0.25 < time.monotonic() - t0 < 2.0


def test_reader_waits_for_the_writers_exclusive_lock(tmp_path: Path) -> None:
    """The writer holds LOCK_EX on <file>.lock; the check must not read before it is released."""
    p = make(tmp_path, "e", [1, 2, 3])
    fd = os.open(p + ".lock", os.O_WRONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    threading.Timer(0.4, lambda: os.close(fd)).start()
    r = FileChecker().check(p, (1, 2, 3))
    assert r.ok and r.lock_wait >= 0.3
    assert os.listdir(tmp_path) == []


def test_lock_held_for_good_is_a_lock_timeout(tmp_path: Path) -> None:
    p = make(tmp_path, "f", [1, 2, 3])
    fd = os.open(p + ".lock", os.O_WRONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = FileChecker(lock_timeout=0.3).check(p, (1, 2, 3))
    finally:
        os.close(fd)
    assert not r.ok and r.error == "lock-timeout"


def test_move_consumes_into_the_directory(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    p = make(src, "g", [1, 2])
    r = FileChecker(f"move:{dest}").check(p, (1, 2))
    assert r.ok and r.consumed == "moved"
    assert os.listdir(src) == [] and os.listdir(dest) == ["g.safetensors"]


def test_keep_is_bounded_by_the_budget(tmp_path: Path) -> None:
    paths = [make(tmp_path, f"k{i}", [1, 2, 3, 4]) for i in range(5)]
    size = os.path.getsize(paths[0])
    checker = FileChecker("keep", keep_budget=2 * size + 1)
    results = [checker.check(p, (1, 2, 3, 4)) for p in paths]
    assert [r.consumed for r in results] == ["kept", "kept", "deleted", "deleted", "deleted"]
    assert sorted(os.listdir(tmp_path)) == ["k0.safetensors", "k1.safetensors"]  # locks removed too
    assert checker.kept_bytes <= 2 * size + 1 and checker.over_budget == 3
