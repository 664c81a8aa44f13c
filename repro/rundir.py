"""Run directories: every command that produces evidence writes into one."""

from __future__ import annotations

import time
from pathlib import Path

from repro.errors import UsageError


def new_run_dir(kind: str, out: str | None = None) -> Path:
    """`out` if given (created), else ./repro-runs/<kind>-<UTC timestamp>."""
    if out:
        p = Path(out).expanduser()
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        p = Path("repro-runs") / f"{kind}-{stamp}"
        n = 1
        while p.exists():
            n += 1
            p = Path("repro-runs") / f"{kind}-{stamp}-{n}"
    if p.exists() and not p.is_dir():
        raise UsageError(f"--out {p}: exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {p}: cannot create it ({exc.strerror})") from None
    return p
