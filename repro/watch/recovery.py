"""When may a server that died of its hidden-state store be started again? (issue 8)

A server whose log names a storage cause (``no-space`` -- ENOSPC, which also covers
running out of inodes --, ``read-only``, ``permission``, ``io-error``; see
:func:`repro.storage.causes.storage_cause`) dies again at its first hidden-state write
when it is restarted into the same store. So after the capture the watchdog does not
restart at once: it reads the store's filesystem (``os.statvfs``) every ``poll`` seconds
and restarts only when

* ``no-space``: the free bytes reach the *need* (below) and, on a filesystem that counts
  inodes, the free inodes reach 1% of them (or the measured file rate times the runway);
* ``read-only`` / ``permission`` / ``io-error``: the store is writable again (not mounted
  read-only, writable by this user). An I/O error cannot be seen from outside: once the
  store is writable the restart goes ahead under the usual back-off.

The need is the larger of ``min_free`` (``5%`` of the filesystem by default, or a fixed
size) and ``runway`` (10 min) at the write rate measured before the death (known when the
watch has ``--storage``: the slope of free bytes over the census history), capped at half
the filesystem so that a fast writer on a small store is still restarted once half of it
is free. The reasoning: a restart that is sure to hit ENOSPC again within minutes only
burns a restart; one with ten minutes of room lets the operator (or the reaper) act first.

When the condition does not hold within ``max_wait`` (10 min) the watchdog stops with one
line saying why it will not restart; it never loops restarting into a full store.

Pure: :class:`StorageRecovery` gets the time and each filesystem reading from its caller,
so tests replay recorded sequences without sleeping.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from repro.errors import UsageError
from repro.options import Flag, check_ranges, setting, size_text
from repro.storage.census import CensusSnapshot
from repro.storage.projection import slope
from repro.units import format_bytes as _mb
from repro.units import format_span as _span
from repro.units import parse_size

WAIT, RESTART, GIVE_UP = "wait", "restart", "give-up"
RUNWAY_CAP = 0.5  # the rate-based need never asks for more than half of the filesystem
INODE_FLOOR = 0.01  # share of the filesystem's inodes that must be free after an ENOSPC


@dataclass(frozen=True)
class MinFree:
    """``--restart-min-free``: a size (``2GB``) or a share of the filesystem (``5%``)."""

    bytes: int | None = None
    fraction: float | None = None

    @classmethod
    def parse(cls, text: str, what: str = "--restart-min-free") -> "MinFree":
        s = str(text).strip()
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", s)
        if m:
            pct = float(m.group(1))
            if not 0 < pct < 100:
                raise UsageError(f"{what} {text!r}: a percentage must be between 0 and 100")
            return cls(fraction=pct / 100)
        n = parse_size(s, what)
        if n <= 0:
            raise UsageError(f"{what} {text!r}: must be positive")
        return cls(bytes=n)

    def __str__(self) -> str:
        """The flag's spelling of it ('5%', '2GB'): how --help shows the default, and what parse() reads back."""
        return size_text(self.bytes) if self.bytes is not None else f"{(self.fraction or 0.0) * 100:g}%"

    def of(self, total: int) -> int:
        return self.bytes if self.bytes is not None else int((self.fraction or 0.0) * total)

    def describe(self) -> str:
        return _mb(self.bytes) if self.bytes is not None else f"{(self.fraction or 0) * 100:g}% of the filesystem"


def _min_free(ctx: Any, param: Any, value: "str | MinFree | None") -> "MinFree | None":
    """click callback of --restart-min-free: the text (or the default) as a MinFree; a bad one is one line."""
    if value is None or isinstance(value, MinFree):
        return value
    return MinFree.parse(value)


@dataclass(frozen=True)
class RecoverySettings:
    min_free: MinFree = setting(factory=lambda: MinFree(fraction=0.05), flag=Flag(
        "--restart-min-free", "After a death the server's log blames on the hidden-state store (ENOSPC), restart "
        "only once the store's filesystem has this much free (e.g. 2GB, or 5% of its size) -- and at least "
        "--restart-runway of the write rate measured before the death (known with --storage), capped at half the "
        "filesystem. A read-only or unwritable store must be writable again.", metavar="SIZE|PCT",
        callback=_min_free))
    runway: float = setting(600.0, flag=Flag(  # seconds of the measured write rate that must fit in the free space
        "--restart-runway", "After a storage death: the free space must last this long at the measured write rate.",
        parse="duration", minimum=0))
    max_wait: float = setting(600.0, flag=Flag(  # give up when the store is not usable again within this
        "--storage-wait-max", "After a storage death: when the store has not enough space again within this, stop "
        "(exit 1) with one line saying why instead of restarting into a full store.", parse="duration",
        positive=True))
    poll: float = 5.0
    report_every: float = 60.0  # a storage-wait event at most this often while waiting

    def validate(self) -> None:
        check_ranges(self)
        if self.poll <= 0 or self.report_every <= 0:
            raise UsageError("the storage-wait poll and report intervals must be positive")


@dataclass(frozen=True)
class FsReading:
    """One look at the store's filesystem."""

    free_bytes: int
    total_bytes: int
    free_inodes: int
    total_inodes: int  # 0: the filesystem does not count inodes
    read_only: bool = False
    writable: bool = True

    @classmethod
    def of(cls, vfs: Any, writable: bool) -> "FsReading":
        return cls(vfs.f_bavail * vfs.f_frsize, vfs.f_blocks * vfs.f_frsize, vfs.f_favail, vfs.f_files,
                   bool(vfs.f_flag & os.ST_RDONLY), writable)


@dataclass(frozen=True)
class Need:
    bytes: int
    inodes: int
    basis: str  # why this much, for the event and the give-up line


@dataclass(frozen=True)
class Decision:
    action: str  # wait | restart | give-up
    message: str
    fields: dict[str, Any]
    announce: bool  # write a storage-wait event now (the first wait, then every report_every s)


def measured_rates(history: Sequence[CensusSnapshot], window: float = 600.0) -> tuple[float | None, float | None]:
    """Bytes/s and inodes/s the store was filling at over the last `window` s of census history (None: unknown or
    not filling). A store that filled up and then stayed full still shows its filling pace over the window."""
    if not history:
        return None, None
    end = history[-1].t
    pts = [s for s in history if s.t >= end - window]
    ts = [s.t for s in pts]
    b = slope(ts, [s.fs_free_bytes for s in pts])
    i = slope(ts, [s.fs_free_inodes for s in pts])
    return (-b if b is not None and b < 0 else None), (-i if i is not None and i < 0 else None)


class StorageRecovery:
    """Decide, reading by reading, whether to keep waiting, restart, or give up (see the module text)."""

    def __init__(self, settings: RecoverySettings, cause: dict[str, str], path: str, started: float,
                 bytes_per_s: float | None = None, inodes_per_s: float | None = None,
                 reaping: bool = False) -> None:
        self.s, self.cause, self.path, self.started = settings, cause, path, started
        self.kind = cause.get("kind", "io-error")
        self.bytes_per_s, self.inodes_per_s, self.reaping = bytes_per_s, inodes_per_s, reaping
        self._announced: float | None = None

    def need(self, r: FsReading) -> Need:
        floor = self.s.min_free.of(r.total_bytes)
        basis = f"--restart-min-free {self.s.min_free.describe()}"
        need = floor
        if self.bytes_per_s:
            runway = int(self.bytes_per_s * self.s.runway)
            cap = int(RUNWAY_CAP * r.total_bytes)
            if min(runway, cap) > floor:
                need = min(runway, cap)
                basis = (f"{_span(self.s.runway)} (--restart-runway) at the {_mb(self.bytes_per_s)}/s the store "
                         f"filled at before the death" + (", capped at half the filesystem" if runway > cap else ""))
        inodes = 0
        if r.total_inodes:
            inodes = int(INODE_FLOOR * r.total_inodes)
            if self.inodes_per_s:
                inodes = max(inodes, min(int(self.inodes_per_s * self.s.runway), int(RUNWAY_CAP * r.total_inodes)))
        return Need(need, inodes, basis)

    def _usable(self, r: FsReading, need: Need) -> tuple[bool, str]:
        if r.read_only:
            return False, "the filesystem is mounted read-only"
        if not r.writable:
            return False, "the store is not writable by this user"
        if self.kind != "no-space":
            return True, "the store is writable again"
        if r.free_bytes < need.bytes:
            return False, f"{_mb(r.free_bytes)} free, {_mb(need.bytes)} needed ({need.basis})"
        if need.inodes and r.free_inodes < need.inodes:
            return False, f"{r.free_inodes} inodes free, {need.inodes} needed (1% of the filesystem's)"
        return True, f"{_mb(r.free_bytes)} free (needed {_mb(need.bytes)}: {need.basis})"

    def _remedy(self) -> str:
        if self.kind == "no-space":
            return ("free space in the store" + ("" if self.reaping else
                                                 " (or let watch delete old unclaimed files with "
                                                 "--storage PATH --reap-orphans-older-than DUR)"))
        if self.kind == "read-only":
            return "remount the store read-write"
        if self.kind == "permission":
            return "give the server's user write access to the store"
        return "check the device behind the store (dmesg)"

    def decide(self, now: float, reading: FsReading | None, error: str | None = None) -> Decision:
        waited = now - self.started
        fields: dict[str, Any] = {"cause": self.kind, "path": self.path, "waited_s": round(waited, 3)}
        if reading is None:
            ok, why = False, f"cannot read the store's filesystem ({error or 'unknown error'})"
        else:
            need = self.need(reading)
            fields.update(free_bytes=reading.free_bytes, total_bytes=reading.total_bytes,
                          free_inodes=reading.free_inodes, need_bytes=need.bytes, need_inodes=need.inodes,
                          basis=need.basis)
            if self.s.min_free.bytes is not None and self.kind == "no-space" and need.bytes > reading.total_bytes:
                msg = (f"will not restart: the server died of {self.kind} and --restart-min-free "
                       f"{_mb(need.bytes)} is more than the whole filesystem of {self.path} ({_mb(reading.total_bytes)})")
                return Decision(GIVE_UP, msg, fields, True)
            ok, why = self._usable(reading, need)
        if ok:
            return Decision(RESTART, f"storage recovered after {_span(waited)}: {why}", fields, True)
        if waited >= self.s.max_wait:
            msg = (f"will not restart: the server died of {self.kind} in its hidden-state store {self.path} and after "
                   f"{_span(waited)} (--storage-wait-max) {why}; {self._remedy()}, then start watch again")
            return Decision(GIVE_UP, msg, fields, True)
        announce = self._announced is None or now - self._announced >= self.s.report_every
        if announce:
            self._announced = now
        msg = (f"not restarting yet: the server died of {self.kind} in {self.path}; {why}; {self._remedy()} "
               f"(giving up after {_span(self.s.max_wait)})")
        return Decision(WAIT, msg, fields, announce)
