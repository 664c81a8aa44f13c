"""An incremental census of a hidden-state store.

vLLM writes ``<req_id>.safetensors`` (and, from 0.22, ``<file>.lock``) into the
connector's ``shared_storage_path`` and never deletes them. The client knows
which paths it was given (``claim``); every other file that stays longer than a
grace period is an *orphan* -- typically the file of a request the client
aborted after its prefill, which vLLM writes anyway (files can appear after the
abort, hence the grace period).

Scanning is cheap with hundreds of thousands of files: each scan lists names
(``os.listdir``, no stat) and stats only names it has not seen before; sizes
and times of known files are remembered. Memory is O(files present), never
O(requests made). The census never opens, moves or deletes a file.
"""

from __future__ import annotations

import heapq
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from repro.errors import UsageError

DATA_SUFFIX = ".safetensors"
LOCK_SUFFIX = ".lock"


@dataclass
class _Entry:
    size: int
    mtime: float


@dataclass(frozen=True)
class CensusSnapshot:
    """One scan's figures (all sizes in bytes, times in seconds since the epoch)."""

    t: float
    files: int  # data files present
    bytes: int
    lock_files: int
    claimed_files: int  # present and claimed by a response
    claimed_bytes: int
    orphan_files: int  # present, never claimed, older than the grace period
    orphan_bytes: int
    pending_files: int  # present, unclaimed, younger than the grace period
    oldest_orphan_age: float | None
    fs_free_bytes: int
    fs_total_bytes: int
    fs_free_inodes: int
    fs_total_inodes: int
    scan_seconds: float
    new_stats: int  # how many files this scan had to stat

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class StorageCensus:
    """Keeps the census of one storage directory across scans."""

    path: Path
    grace: float = 30.0
    _known: dict[str, _Entry] = field(default_factory=dict)
    claim_ttl: float = 600.0  # a claim for a file never seen is dropped after this long
    _claimed: dict[str, float] = field(default_factory=dict)  # name -> time claimed
    _files: int = 0
    _bytes: int = 0
    _cbytes: int = 0  # bytes of present, claimed files
    _young: dict[str, _Entry] = field(default_factory=dict)  # unclaimed, within the grace period
    _orphans: dict[str, int] = field(default_factory=dict)  # name -> size
    _obytes: int = 0
    _oldest: list[tuple[float, str]] = field(default_factory=list)  # heap of (mtime, name), lazily cleaned

    def _add_orphan(self, name: str, e: _Entry) -> None:
        if name not in self._orphans:
            self._orphans[name] = e.size
            self._obytes += e.size
            heapq.heappush(self._oldest, (e.mtime, name))

    def _drop_orphan(self, name: str) -> None:
        size = self._orphans.pop(name, None)
        if size is not None:
            self._obytes -= size
    history: deque[CensusSnapshot] = field(default_factory=lambda: deque(maxlen=720))

    @classmethod
    def open(cls, path: str | Path, grace: float = 30.0) -> "StorageCensus":
        p = Path(path).expanduser()
        if not p.is_dir():
            raise UsageError(f"storage path {path}: no such directory")
        if not os.access(p, os.R_OK | os.X_OK):
            raise UsageError(f"storage path {path}: not readable by this user")
        return cls(p, grace)

    def claim(self, file_path: str) -> None:
        """A response named this file: it belongs to the client, whatever happens to it later."""
        name = os.path.basename(file_path)
        if name and name not in self._claimed:
            self._claimed[name] = time.time()
            e = self._known.get(name)
            if e is not None:
                self._cbytes += e.size
                self._drop_orphan(name)  # a late claim: the client was told after all

    def forget(self, file_path: str) -> None:
        """The client consumed (deleted or moved) a claimed file: nothing left to remember."""
        name = os.path.basename(file_path)
        if self._claimed.pop(name, None) is not None and name in self._known:
            self._cbytes -= self._known[name].size

    def is_claimed(self, name: str) -> bool:
        return name in self._claimed

    def scan(self, now: float | None = None) -> CensusSnapshot:
        t0 = time.perf_counter()
        now = time.time() if now is None else now
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            names = []
        locks = sum(1 for n in names if n.endswith(LOCK_SUFFIX))
        present = {n for n in names if n.endswith(DATA_SUFFIX)}
        known = self._known
        # forget what is gone (consumed by the client or reaped): memory stays O(files present)
        for name in known.keys() - present:
            e = known.pop(name)
            self._files -= 1
            self._bytes -= e.size
            if self._claimed.pop(name, None) is not None:
                self._cbytes -= e.size
            self._drop_orphan(name)
        new_stats = 0
        new_names = present - known.keys()
        for name in new_names:
            try:
                st = os.lstat(os.path.join(self.path, name))
            except FileNotFoundError:
                continue
            known[name] = _Entry(st.st_size, st.st_mtime)
            self._files += 1
            self._bytes += st.st_size
            if name in self._claimed:
                self._cbytes += st.st_size
            new_stats += 1
        if len(self._claimed) > self._files:
            stale = now - self.claim_ttl
            for name in [n for n, t in self._claimed.items() if n not in known and t < stale]:
                del self._claimed[name]
        claimed_present = sum(1 for n in self._claimed if n in known) if self._claimed else 0
        # unclaimed files: orphans (older than grace) are kept as running sums; only young ones are revisited
        cutoff = now - self.grace
        for name in [n for n, e in self._young.items() if e.mtime <= cutoff or n in self._claimed or n not in known]:
            e = self._young.pop(name)
            if name in known and name not in self._claimed:
                self._add_orphan(name, e)
        for name in new_names:
            e = known.get(name)
            if e is None or name in self._claimed:
                continue
            if e.mtime <= cutoff:
                self._add_orphan(name, e)
            else:
                self._young[name] = e
        of, ob, pf = len(self._orphans), self._obytes, len(self._young)
        if len(self._oldest) > 2 * len(self._orphans) + 1024:  # drop entries of orphans that are gone
            self._oldest = [(t, n) for t, n in self._oldest if n in self._orphans]
            heapq.heapify(self._oldest)
        while self._oldest and self._oldest[0][1] not in self._orphans:
            heapq.heappop(self._oldest)
        oldest = self._oldest[0][0] if self._oldest else None
        try:
            vfs = os.statvfs(self.path)
            fs = (vfs.f_bavail * vfs.f_frsize, vfs.f_blocks * vfs.f_frsize, vfs.f_favail, vfs.f_files)
        except OSError:
            fs = (0, 0, 0, 0)
        snap = CensusSnapshot(now, self._files, self._bytes, locks, claimed_present, self._cbytes, of, ob, pf,
                              None if oldest is None else now - oldest, *fs,
                              scan_seconds=time.perf_counter() - t0, new_stats=new_stats)
        self.history.append(snap)
        return snap

    def orphans(self, now: float | None = None, limit: int | None = None) -> list[tuple[str, int, float]]:
        """(name, size, age) of orphans, oldest first; `limit` for a sample."""
        now = time.time() if now is None else now
        out = [(n, e.size, now - e.mtime) for n in self._orphans
               if (e := self._known.get(n)) is not None and n not in self._claimed]
        out.sort(key=lambda x: -x[2])
        return out[:limit] if limit else out

    def unclaimed_names(self) -> list[str]:
        return [n for n in self._known if n not in self._claimed]
