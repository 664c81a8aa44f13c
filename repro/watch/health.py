"""repro's own view of the engine, as a file a container HEALTHCHECK can read.

vLLM's ``/health`` answers 200 while the engine is stalled, so a HEALTHCHECK on it says
"healthy" through the very hang repro exists for. ``repro watch`` writes its state
instead (``state.json`` in the run directory, or ``--state-file`` /
``$REPRO_WATCH_STATE_FILE``): the detector's state on every evaluation, and every
transition (stalled, restarting, starting, gave-up, storage-wait). ``repro health``
reads it and exits 0 only when watch is evaluating a server that makes progress
(``healthy``, or ``suspect`` until the window is up); a state file that watch stopped
refreshing means watch itself is stuck, which is unhealthy too.

File format (``"schema": "repro.watch-state"``, ``"version": 1``): ``state``, ``code``
(the ``repro_watch_state`` gauge's value), ``updated`` (Unix time), ``pid`` (of the
watch), ``since`` (when this state began), ``url``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro.formats import WATCH_STATE_FORMAT

SCHEMA, VERSION = WATCH_STATE_FORMAT.schema, WATCH_STATE_FORMAT.version
STATE_FILE_ENV = "REPRO_WATCH_STATE_FILE"
SERVING = ("healthy", "suspect")  # states in which the engine is (still) taken to make progress
DEFAULT_MAX_AGE = 60.0


class StateFile:
    """Writes the watch's state atomically (a reader never sees half a file)."""

    def __init__(self, path: str | os.PathLike[str], url: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.url = url
        self.clock = clock
        self.state: str | None = None
        self.code: int | None = None
        self.since: float | None = None

    def set(self, state: str, code: int) -> None:
        if state != self.state:
            self.state, self.code, self.since = state, code, self.clock()
        self.write()

    def write(self) -> None:
        if self.state is None:
            return
        now = self.clock()
        data = {"schema": SCHEMA, "version": VERSION, "state": self.state, "code": self.code,
                "updated": round(now, 3), "since": round(self.since or now, 3), "pid": os.getpid(), "url": self.url}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data) + "\n")
            os.replace(tmp, self.path)
        except OSError:
            pass  # the watch goes on; `repro health` then reports the file as stale


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    line: str  # one line for the HEALTHCHECK log (`docker inspect` shows it)


def check(path: str | os.PathLike[str], max_age: float = DEFAULT_MAX_AGE,
          now: Callable[[], float] = time.time) -> Verdict:
    """Healthy when the state file says watch is evaluating a server that makes progress, and is fresh."""
    p = Path(path)
    try:
        data: dict[str, Any] = json.loads(p.read_text())
    except FileNotFoundError:
        return Verdict(False, f"no repro watch state at {p} (is `repro watch` running, with this --state-file?)")
    except (OSError, ValueError) as exc:
        return Verdict(False, f"cannot read the repro watch state {p}: {exc}")
    if data.get("schema") != SCHEMA or not isinstance(data.get("version"), int) or data["version"] > VERSION:
        return Verdict(False, f"{p} is not a repro watch state file of version <= {VERSION}")
    state = str(data.get("state"))
    age = now() - float(data.get("updated") or 0)
    for_s = max(0.0, now() - float(data.get("since") or data.get("updated") or 0))
    where = f" ({data['url']})" if data.get("url") else ""
    if state not in SERVING:
        return Verdict(False, f"{state} for {for_s:.0f} s{where}: repro watch does not see the engine serving")
    if age > max_age:
        return Verdict(False, f"repro watch (pid {data.get('pid')}) has not updated {p} for {age:.0f} s "
                              f"(more than {max_age:.0f} s): the watchdog itself is stuck or gone")
    return Verdict(True, f"{state} for {for_s:.0f} s{where}, as repro watch sees the engine")
