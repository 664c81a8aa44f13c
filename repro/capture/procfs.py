"""Per-thread CPU time, state and wchan from /proc (what py-spy cannot tell: is the thread moving?)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def parse_stat(text: str) -> dict[str, Any]:
    """Fields of /proc/PID/task/TID/stat. The comm field may hold spaces and parentheses: split at the last ')'."""
    lpar, rpar = text.index("("), text.rindex(")")
    comm = text[lpar + 1:rpar]
    rest = text[rpar + 2:].split()
    # rest[0] is field 3 (state); utime is field 14, stime field 15 → rest[11], rest[12].
    return {"comm": comm, "state": rest[0], "utime": int(rest[11]) / CLK_TCK, "stime": int(rest[12]) / CLK_TCK,
            "processor": int(rest[36]) if len(rest) > 36 else None}


def threads(pid: int, proc: Path = Path("/proc")) -> dict[str, Any]:
    """{"t": wall time, "threads": {tid: {comm, state, cpu, wchan}}} or {"error": ...} when /proc cannot be read.

    A process in a container (another pid namespace) has its threads keyed by their tid *inside* that namespace,
    the number py-spy reports as ``os_thread_id`` (Python >= 3.11 keeps it in each thread state); the host's tid
    is kept as ``host_tid`` and the process's own pid there as ``ns_pid``.
    """
    out: dict[str, Any] = {"t": time.time(), "pid": pid, "threads": {}}
    task_dir = proc / str(pid) / "task"
    try:
        tids = sorted(os.listdir(task_dir), key=int)
    except OSError as exc:
        out["error"] = f"cannot list {task_dir}: {exc.strerror or exc}"
        return out
    inner = nspid(pid, proc)
    nested = inner is not None and inner != pid
    if nested:
        out["ns_pid"] = inner
    for tid in tids:
        d = task_dir / tid
        try:
            st = parse_stat((d / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # the thread exited between listdir and read
        try:
            wchan = (d / "wchan").read_text().strip() or "0"
        except OSError:
            wchan = "?"
        rec = {"comm": st["comm"], "state": st["state"], "cpu": round(st["utime"] + st["stime"], 3),
               "utime": st["utime"], "stime": st["stime"], "wchan": wchan}
        key = tid
        if nested:
            ns_tid = _nspid_of(d / "status")
            if ns_tid is None:
                continue  # exited meanwhile
            rec["host_tid"] = int(tid)
            key = str(ns_tid)
        out["threads"][key] = rec
    return out


def _nspid_of(status: Path) -> int | None:
    try:
        for line in status.read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def nspid(pid: int, proc: Path = Path("/proc")) -> int | None:
    """The pid of `pid` inside its innermost pid namespace (what py-spy there is given), from NSpid."""
    return _nspid_of(proc / str(pid) / "status")


def in_other_mount_namespace(pid: int, proc: Path = Path("/proc")) -> bool:
    """True when `pid` sees another filesystem than this process (a container's process, seen from its host)."""
    try:
        return os.readlink(proc / str(pid) / "ns" / "mnt") != os.readlink(proc / "self" / "ns" / "mnt")
    except OSError:
        return False


def in_other_pid_namespace(pid: int, proc: Path = Path("/proc")) -> bool:
    """True when `pid` lives in a pid namespace other than this process's (a container seen from its host)."""
    try:
        return os.readlink(proc / str(pid) / "ns" / "pid") != os.readlink(proc / "self" / "ns" / "pid")
    except OSError:
        inner = nspid(pid, proc)
        return inner is not None and inner != pid
