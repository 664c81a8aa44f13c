"""Growth rates and time-until-full from census snapshots (least squares over a window)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from repro.storage.census import CensusSnapshot


def slope(ts: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys over ts; None with fewer than 2 distinct times."""
    n = len(ts)
    if n < 2:
        return None
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var <= 0:
        return None
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var


@dataclass(frozen=True)
class Projection:
    orphan_files_per_s: float | None
    orphan_bytes_per_s: float | None
    used_bytes_per_s: float | None  # filesystem-wide, from free space
    seconds_to_full: float | None  # None: not filling (or not enough data)
    seconds_to_no_inodes: float | None
    window_s: float


def project(history: Sequence[CensusSnapshot], window: float = 300.0) -> Projection:
    """Rates over the last `window` seconds of history and when space or inodes run out at that pace."""
    if not history:
        return Projection(None, None, None, None, None, 0.0)
    end = history[-1].t
    pts = [s for s in history if s.t >= end - window]
    ts = [s.t for s in pts]
    of = slope(ts, [s.orphan_files for s in pts])
    ob = slope(ts, [s.orphan_bytes for s in pts])
    free_rate = slope(ts, [s.fs_free_bytes for s in pts])
    inode_rate = slope(ts, [s.fs_free_inodes for s in pts])
    used_rate = -free_rate if free_rate is not None else None
    last = pts[-1]
    to_full = last.fs_free_bytes / used_rate if used_rate and used_rate > 0 else None
    to_inodes = last.fs_free_inodes / -inode_rate if inode_rate and inode_rate < 0 and last.fs_total_inodes else None
    return Projection(of, ob, used_rate, to_full, to_inodes, ts[-1] - ts[0] if len(ts) > 1 else 0.0)
