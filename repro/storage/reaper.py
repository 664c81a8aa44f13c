"""Reap orphaned hidden-state files: off by default, never outside the storage path, every deletion logged."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from repro.storage.census import DATA_SUFFIX, LOCK_SUFFIX, StorageCensus


@dataclass
class ReapResult:
    deleted: list[str] = field(default_factory=list)  # names (dry run: would be deleted)
    bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    dry_run: bool = False


def reap_orphans(census: StorageCensus, older_than: float, dry_run: bool = False,
                 log: Callable[[str], None] | None = None, now: float | None = None) -> ReapResult:
    """Delete data files (and their .lock) that no response claimed and that are older than `older_than` s.

    Only regular files directly inside the storage directory are touched: a symlink, a
    subdirectory, or anything that resolves outside the directory is skipped, never followed.
    """
    now = time.time() if now is None else now
    root = census.path.resolve()
    res = ReapResult(dry_run=dry_run)
    for name, size, age in census.orphans(now=now):
        if age < older_than or census.is_claimed(name):
            continue
        path = root / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            res.skipped.append((name, "not a regular file (symlink or other)"))
            continue
        if path.resolve().parent != root:
            res.skipped.append((name, "resolves outside the storage path"))
            continue
        if not name.endswith(DATA_SUFFIX):
            continue
        if log:
            log(f"{'would delete' if dry_run else 'deleting'} orphan {path} ({size} bytes, {age:.0f} s old)")
        if not dry_run:
            try:
                path.unlink()
                lock = root / (name + LOCK_SUFFIX)
                if os.path.lexists(lock) and stat.S_ISREG(os.lstat(lock).st_mode):
                    lock.unlink()
            except FileNotFoundError:
                continue
        res.deleted.append(name)
        res.bytes += size
    return res


def is_inside(root: Path, candidate: Path) -> bool:
    try:
        candidate.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False
