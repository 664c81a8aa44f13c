"""events.jsonl: what a run decided and saw, one JSON object a line, flushed at once -- for stress and watch.

The first line says what the file is and what ``t`` means::

    {"schema": "repro.events", "version": 2, "seq": 0, "t": 0.0, "wall": "2026-...Z", "event": "events",
     "origin": 1764620000.123, "t_is": "seconds since origin (the load start), on the monotonic clock"}

Every later line has ``seq`` (1, 2, ...), ``t`` (seconds since ``origin``: the load start in
``repro stress``, the watch start in ``repro watch``), ``wall`` (ISO 8601 UTC), ``event`` and the
event's fields; the wall time of an event is ``origin + t``. Files written by an earlier repro have
no first line: stress's ``t`` was already seconds since the load start, watch's ``t`` was epoch
seconds (with ISO time in ``time``); :func:`epoch_of` reads all three.

One vocabulary across commands: ``start``/``stop``, ``detector`` (state changes), ``stall`` /
``detect``, ``capture``, ``probe``, ``log-warning`` (a warning marker in the server log, first of
its kind), ``abort-storm`` / ``abort-storm-end``, ``storage-warning`` (``kind``) / ``storage-ok``,
``storage-error``; each command adds its own (stress: ``prompt-clip``, ``file-bad``, ``give-up``,
``drain-timeout``, ``storage-final``; watch: see :mod:`repro.watch.events`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repro import formats

EVENTS = formats.EVENTS_FORMAT  # v2: a header line first; files without one (v1) still read
SCHEMA, VERSION = EVENTS.schema, EVENTS.version
HEADER = "events"  # the event name of the first line


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class EventLog:
    """Appends events to ``path``; ``t`` is measured on ``clock`` from the moment the log is opened.

    ``clock`` defaults to the monotonic clock; a log given only a ``wall`` clock (a replayed or fake
    one) measures ``t`` on it. ``recent`` keeps the last ``keep`` events (handed to capture);
    ``listeners`` are called with every event. An event written after :meth:`close` is kept in
    memory only (a hook may finish after the run ended)."""

    def __init__(self, path: Path, wall: Callable[[], float] = time.time, keep: int = 500,
                 clock: Callable[[], float] | None = None, t_is: str = "the run's start") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._wall = wall
        self._clock = clock or (time.monotonic if wall is time.time else wall)
        self._lock = threading.Lock()
        self.seq = 0
        self.recent: list[dict[str, Any]] = []
        self._keep = keep
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.origin = self._clock()  # on `clock`
        self.origin_wall = wall()
        self._f = open(self.path, "a", encoding="utf-8")
        clock_name = "monotonic" if self._clock is time.monotonic else "wall"
        header = formats.stamp(EVENTS, {"seq": 0, "t": 0.0, "wall": iso(self.origin_wall), "event": HEADER,
                                        "origin": round(self.origin_wall, 3),
                                        "t_is": f"seconds since origin ({t_is}), on the {clock_name} clock"})
        self._f.write(json.dumps(header) + "\n")
        self._f.flush()

    def rel(self, clock_value: float) -> float:
        """A reading of ``clock`` as this file's ``t``."""
        return clock_value - self.origin

    def write(self, event: str, /, **fields: Any) -> dict[str, Any]:
        with self._lock:
            self.seq += 1
            rec = {"seq": self.seq, "t": round(self._clock() - self.origin, 3), "wall": iso(self._wall()),
                   "event": event, **fields}
            if not self._f.closed:
                self._f.write(json.dumps(rec, default=str) + "\n")
                self._f.flush()
            self.recent.append(rec)
            del self.recent[:-self._keep]
        for cb in self.listeners:
            cb(rec)
        return rec

    @property
    def closed(self) -> bool:
        return self._f.closed

    def close(self) -> None:
        with self._lock:
            self._f.close()


def read_events(path: Path, epoch: bool = False) -> list[dict[str, Any]]:
    """The events of a file, without its first (descriptive) line; every version (see the module's notes).

    ``epoch``: with ``t`` as epoch seconds (:func:`epoch_of`)."""
    recs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if recs and recs[0].get("event") == HEADER and "schema" in recs[0]:
        formats.check(EVENTS, recs[0], str(path))
        return epoch_of(recs) if epoch else recs[1:]
    return epoch_of(recs) if epoch else recs


def epoch_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events whose ``t`` is epoch seconds, whatever the file's version (copies; the header line dropped).

    Version 2 (a first line with ``origin``): ``origin + t``. Before: watch's ``t`` was epoch seconds already,
    stress's was seconds since the load start (its ``wall`` ISO time is used)."""
    origin = None
    out = []
    for e in events:
        if e.get("event") == HEADER and "schema" in e:
            origin = e.get("origin")
            continue
        t = e.get("t")
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            if isinstance(origin, (int, float)):
                e = {**e, "t": origin + t}
            elif t < 1e9 and isinstance(e.get("wall"), str):
                e = {**e, "t": _parse_iso(e["wall"], t)}
        out.append(e)
    return out


def _parse_iso(s: str, default: float) -> float:
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default
