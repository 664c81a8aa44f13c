"""events.jsonl: every decision the watchdog takes, one JSON object a line, flushed at once.

Each line has ``seq`` (1, 2, ...), ``t`` (wall time, seconds), ``time`` (ISO 8601 UTC),
``event`` and the fields of the event. The kinds, in the order a stall produces them:
``detect`` -> ``capture`` -> ``stop`` -> ``port-free`` (-> ``gpu-free``) -> ``backoff`` ->
``start`` -> ``healthy``; plus ``watch-start``, ``detector`` (state changes), ``hook``,
``give-up``, ``start-failed``, ``log-warning`` (a warning marker in the server log, first of its kind
per server, as in stress) and ``watch-stop``. After a death the server's log blames on the
hidden-state store: ``storage-wait`` (free vs needed bytes, what to do) between ``gpu-free``
and ``start``, then ``restart`` (reason ``storage recovered``) or ``give-up`` (reason ``storage``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCHEMA = "repro.watch.events"
VERSION = 1


class EventLog:
    def __init__(self, path: Path, wall: Callable[[], float] = time.time, keep: int = 500) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")
        self._wall = wall
        self._lock = threading.Lock()
        self.seq = 0
        self.recent: list[dict[str, Any]] = []  # the last `keep` events (handed to capture)
        self._keep = keep
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            self.seq += 1
            t = self._wall()
            rec = {"seq": self.seq, "t": round(t, 3),
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z",
                   "event": event, **fields}
            if not self._f.closed:  # a hook may finish after the watch ended: keep it in memory only
                self._f.write(json.dumps(rec, default=str) + "\n")
                self._f.flush()
            self.recent.append(rec)
            del self.recent[:-self._keep]
        for cb in self.listeners:
            cb(rec)
        return rec

    def close(self) -> None:
        with self._lock:
            self._f.close()


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
