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
    """{"t": wall time, "threads": {tid: {comm, state, cpu, wchan}}} or {"error": ...} when /proc cannot be read."""
    out: dict[str, Any] = {"t": time.time(), "pid": pid, "threads": {}}
    task_dir = proc / str(pid) / "task"
    try:
        tids = sorted(os.listdir(task_dir), key=int)
    except OSError as exc:
        out["error"] = f"cannot list {task_dir}: {exc.strerror or exc}"
        return out
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
        out["threads"][tid] = {"comm": st["comm"], "state": st["state"], "cpu": round(st["utime"] + st["stime"], 3),
                               "utime": st["utime"], "stime": st["stime"], "wchan": wchan}
    return out


def nspid(pid: int, proc: Path = Path("/proc")) -> int | None:
    """The pid of `pid` inside its innermost pid namespace (for `docker exec py-spy --pid`), from NSpid."""
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None
