"""Storage warnings while a run goes: `storage-leak` and `storage-exhaustion`, before anything breaks.

:class:`StorageWatch` wraps a :class:`~repro.storage.census.StorageCensus` with a
bounded scan rate (a scan never takes more than ``max_share`` of wall time, and
never runs more often than ``min_interval``) and turns its history into
warnings:

* ``storage-leak``: orphaned files (never claimed by any response) keep growing
  over ``leak_window`` -- typically aborted requests whose files vLLM still wrote;
* ``storage-exhaustion``: at the current pace the filesystem runs out of space
  or inodes within ``horizon`` seconds.

Both are warnings about the store, not stalls of the engine.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from repro.storage.census import CensusSnapshot, StorageCensus
from repro.storage.projection import Projection, project


def _span(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


@dataclass(frozen=True)
class StorageWarning:
    kind: str  # storage-leak | storage-exhaustion
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StorageWatch:
    census: StorageCensus
    horizon: float = 1800.0
    leak_window: float = 120.0
    min_orphans: int = 10
    min_interval: float = 5.0
    max_share: float = 0.02
    _next: float = 0.0
    last: CensusSnapshot | None = None
    last_projection: Projection | None = None

    @classmethod
    def open(cls, path: str | Path, grace: float = 30.0, **kw: Any) -> "StorageWatch":
        return cls(StorageCensus.open(path, grace), **kw)

    def claim(self, file_path: str) -> None:
        self.census.claim(file_path)

    def forget(self, file_path: str) -> None:
        self.census.forget(file_path)

    def due(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self._next

    def poll(self, force: bool = False, now: float | None = None) -> list[StorageWarning]:
        """Scan if due (or forced) and return the warnings that hold now."""
        mono = time.monotonic()
        if not force and mono < self._next:
            return []
        snap = self.census.scan(now=now)
        self._next = mono + max(self.min_interval, snap.scan_seconds / self.max_share)
        self.last = snap
        self.last_projection = project(self.census.history, window=max(self.leak_window, 60.0))
        return self.assess(self.census.history, self.last_projection)

    def assess(self, history: Any, proj: Projection) -> list[StorageWarning]:
        out: list[StorageWarning] = []
        if not history:
            return out
        last = history[-1]
        span = [s for s in history if s.t >= last.t - self.leak_window]
        if (len(span) >= 3 and span[-1].t - span[0].t >= self.leak_window * 0.5 and last.orphan_files >= self.min_orphans
                and span[-1].orphan_files > span[0].orphan_files and (proj.orphan_files_per_s or 0) > 0):
            out.append(StorageWarning(
                "storage-leak",
                f"{last.orphan_files} hidden-state files ({last.orphan_bytes / 1e6:.1f} MB) were never returned to any "
                f"client and keep growing ({(proj.orphan_files_per_s or 0) * 60:.1f} files/min); nothing deletes them",
                {"orphan_files": last.orphan_files, "orphan_bytes": last.orphan_bytes,
                 "orphan_files_per_s": proj.orphan_files_per_s, "orphan_bytes_per_s": proj.orphan_bytes_per_s,
                 "oldest_orphan_age_s": last.oldest_orphan_age}))
        soonest = min((x for x in (proj.seconds_to_full, proj.seconds_to_no_inodes) if x is not None), default=None)
        if soonest is not None and soonest <= self.horizon:
            what = "space" if soonest == proj.seconds_to_full else "inodes"
            out.append(StorageWarning(
                "storage-exhaustion",
                f"the hidden-state store runs out of {what} in about {_span(soonest)} at the current pace "
                f"({last.fs_free_bytes / 1e6:.0f} MB free); a full store kills vLLM's engine (ENOSPC in the write)",
                {"seconds_to_full": proj.seconds_to_full, "seconds_to_no_inodes": proj.seconds_to_no_inodes,
                 "fs_free_bytes": last.fs_free_bytes, "fs_free_inodes": last.fs_free_inodes,
                 "used_bytes_per_s": proj.used_bytes_per_s}))
        return out

    def accounting(self, sample: int = 50, curve: bool = True) -> dict[str, Any]:
        """For a bundle (``storage_accounting``): the last scan's figures, rates and projection, a sample of
        orphans and the growth curve -- what ``repro issue`` words and the timeline plot draws. The one
        accounting of a store: stress (:mod:`repro.load.store`) and watch both build on it."""
        c = self.census
        out: dict[str, Any] = {"path": str(c.path), "grace_s": c.grace, "horizon_s": self.horizon}
        if self.last is not None:
            out.update({k: v for k, v in self.last.to_dict().items() if k not in _NOT_FIGURES})
            out["oldest_orphan_age_s"] = self.last.oldest_orphan_age
        p = self.last_projection
        if p is not None:
            out["rates"] = {k: getattr(p, k) for k in ("orphan_files_per_s", "orphan_bytes_per_s", "used_bytes_per_s",
                                                       "window_s")}
            out["projected_seconds_to_full"], out["projected_seconds_to_no_inodes"] = p.seconds_to_full, p.seconds_to_no_inodes
        out["orphan_sample"] = [{"name": n, "bytes": b, "age_s": round(a, 3)} for n, b, a in c.orphans(limit=sample)]
        if curve:
            out["growth_curve"] = [{k: round(s.t, 3) if k == "t" else getattr(s, k) for k in _CURVE} for s in c.history]
        return out


_NOT_FIGURES = ("t", "scan_seconds", "new_stats", "oldest_orphan_age")
_CURVE = ("t", "files", "bytes", "orphan_files", "orphan_bytes", "fs_free_bytes", "fs_free_inodes")
