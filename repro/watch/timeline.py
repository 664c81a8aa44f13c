"""timeline.csv of a watch: what the watchdog saw of the server, for the report's plot.

One row per evaluation, at most one every ``every`` seconds, plus every row at which the
detector's state changed (so a suspect spell or a stall is never missed between rows). With
the 5 s default that is about 1.5 MB a day. ``server`` counts the servers watched (1, then 2
after the first restart, ...). The token counters start again at every restart.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

from repro.monitor.detector import Assessment, Observation

FIELDS = ["t", "wall", "server", "server_running", "server_waiting", "server_in_system", "kv_usage",
          "prompt_tokens_total", "generation_tokens_total", "completed", "metrics_error", "state", "class", "probe"]


class WatchTimeline:
    def __init__(self, path: Path, every: float = 5.0, wall: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.every = every
        self.wall = wall
        self._f = open(self.path, "a", newline="", encoding="utf-8")
        self._w = csv.writer(self._f)
        if self._f.tell() == 0:
            self._w.writerow(FIELDS)
        self._t0: float | None = None
        self._last: float | None = None  # None: the first evaluation is written at once

    def record(self, ob: Observation, a: Assessment, server: int) -> bool:
        """Write a row for this evaluation when due (or when the state changed); True when written."""
        if self._t0 is None:
            self._t0 = ob.t
        if not (a.changed or self._last is None or ob.t - self._last >= self.every):
            return False
        self._last = ob.t
        m = ob.metrics
        server_cols = ([m.running, m.waiting, m.in_server, m.kv_usage, m.prompt_tokens, m.generation_tokens,
                        m.request_success] if m is not None else [None] * 7)
        self._w.writerow([round(ob.t - self._t0, 3), round(self.wall(), 3), server, *server_cols,
                          ob.metrics_error or "", a.state, a.stall_class or "", ob.probe or ""])
        self._f.flush()
        return True

    def close(self) -> None:
        self._f.close()
