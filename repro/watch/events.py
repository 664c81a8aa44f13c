"""events.jsonl of a watch: every decision the watchdog takes, one JSON object a line, flushed at once.

Written by the writer ``repro stress`` uses too (:class:`repro.monitor.events.EventLog`): a first
line says what the file is and that ``t`` is seconds since the watch started; each later line has
``seq`` (1, 2, ...), ``t``, ``wall`` (ISO 8601 UTC), ``event`` and the fields of the event. (A watch
of an earlier repro wrote epoch seconds in ``t`` and the ISO time in ``time``, with no first line;
:func:`repro.monitor.events.epoch_of` reads both.) The kinds, in the order a stall produces them:
``detect`` -> ``capture`` -> ``stop`` -> ``port-free`` (-> ``gpu-free``) -> ``backoff`` ->
``start`` -> ``healthy``; plus ``watch-start``, ``detector`` (state changes), ``hook``,
``give-up``, ``start-failed``, ``log-warning`` (a warning marker in the server log, first of its kind
per server, as in stress) and ``watch-stop``. After a death the server's log blames on the
hidden-state store: ``storage-wait`` (free vs needed bytes, what to do) between ``gpu-free``
and ``start``, then ``restart`` (reason ``storage recovered``) or ``give-up`` (reason ``storage``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from repro.monitor import events as _events
from repro.monitor.events import SCHEMA, VERSION, epoch_of, read_events

__all__ = ["EventLog", "SCHEMA", "VERSION", "epoch_of", "read_events"]


class EventLog(_events.EventLog):
    """The shared events writer, with ``t`` counted from the watch's start."""

    def __init__(self, path: Path, wall: Callable[[], float] = time.time, keep: int = 500,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(path, wall, keep, clock, t_is="the watch start")
