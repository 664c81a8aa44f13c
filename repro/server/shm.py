"""Shared-memory segments a stopped vLLM leaves in /dev/shm.

vLLM's engine and workers talk through POSIX shared memory (``/dev/shm/psm_*``,
the shm_broadcast message queues, 160-250 MB each, sparse; and multiprocessing's
``sem.mp-*`` semaphores). A process group
stopped by SIGKILL -- the normal end of a stalled server -- never unlinks them,
so a watchdog that restarts for days fills /dev/shm with them. ``segments``
takes the names a group has mapped before it is stopped; ``remove_unused``
unlinks those no live process maps any more. Nothing else in /dev/shm is touched.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

SHM = "/dev/shm/"
PREFIXES = ("psm_", "sem.mp-")  # POSIX shared memory and multiprocessing's named semaphores


def _mapped(pid: int) -> set[str]:
    out: set[str] = set()
    try:
        with open(f"/proc/{pid}/maps", errors="replace") as f:
            for line in f:
                i = line.find(SHM)
                if i >= 0:
                    out.add(line[i:].strip().removesuffix(" (deleted)"))
    except OSError:
        pass
    try:
        for fd in os.scandir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(fd.path)
            except OSError:
                continue
            if target.startswith(SHM):
                out.add(target.removesuffix(" (deleted)"))
    except OSError:
        pass
    return {p for p in out if _ours(p)}


def _ours(path: str) -> bool:
    """A psm_*/sem.mp-* segment directly in /dev/shm (never anything in a subdirectory)."""
    name = path[len(SHM):]
    return path.startswith(SHM) and "/" not in name and name.startswith(PREFIXES)


def segments(pids: Iterable[int]) -> set[str]:
    """The /dev/shm/psm_* segments (and sem.mp-* semaphores) these processes map or hold open."""
    found: set[str] = set()
    for pid in pids:
        found |= _mapped(pid)
    return found


def remove_unused(paths: Iterable[str]) -> list[str]:
    """Unlink the segments of `paths` that still exist and that no live process maps; return those removed."""
    left = {p for p in paths if _ours(p) and os.path.exists(p)}
    if not left:
        return []
    for proc in Path("/proc").iterdir():
        if not left:
            break
        if proc.name.isdigit():
            left -= _mapped(int(proc.name))
    removed = []
    for p in sorted(left):
        try:
            os.unlink(p)
            removed.append(p)
        except OSError:
            pass
    return removed
