"""A stress run's stall verdict as a document: detection.json and summary.json's ``stall``.

:func:`detection` is pure: the detector's :class:`~repro.monitor.detector.Assessment`, the run's
clock (``rel``: a monotonic reading as seconds since the load start), what the server last showed
before the verdict (:class:`LastSeen`; for a death, the moment before it went away) and the fault
plugin's records (``injected.jsonl``, :func:`read_injected`) -> the dict both files hold.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro.load.outputs import iso
from repro.monitor.detector import Assessment
from repro.monitor.metrics import MetricsSample


@dataclass(frozen=True)
class LastSeen:
    metrics: MetricsSample | None  # the last /metrics that answered
    metrics_wall: float | None  # when it answered (epoch)
    refused_wall: float | None  # the first refused /metrics of the current streak (epoch)
    stats_line: str | None  # the last stats line as vLLM printed it
    client_in_flight: int

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {"metrics_wall": None if self.metrics_wall is None else iso(self.metrics_wall),
                "metrics": None if m is None else {"running": m.running, "waiting": m.waiting, "kv_usage": m.kv_usage,
                                                   "prompt_tokens_total": m.prompt_tokens,
                                                   "generation_tokens_total": m.generation_tokens},
                "refused_wall": None if self.refused_wall is None else iso(self.refused_wall),
                "stats_line": self.stats_line, "client_in_flight": self.client_in_flight}


def read_injected(path: Path) -> list[dict[str, Any]]:
    """The fault plugin's records (one JSON object a line; unreadable lines and a missing file: nothing)."""
    out = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def detection(a: Assessment, rel: Callable[[float], float], window: float, last_seen: LastSeen,
              injected: list[dict[str, Any]]) -> dict[str, Any]:
    since = a.since if a.since is not None else a.t
    wall_of = (lambda mono: time.time() - (time.monotonic() - mono))
    d = {"class": a.stall_class, "state": a.state,
         "since_s": round(rel(since), 3), "detected_s": round(rel(a.t), 3),
         "since_wall": iso(wall_of(since)), "detected_wall": iso(wall_of(a.t)),
         "detection_delay_s": round(a.t - since, 3), "window_s": window,
         "evidence": a.evidence, "last_seen": last_seen.to_dict()}
    first = next((e for e in injected if e.get("event") in ("stall",)), None)
    if first is not None:
        d["injected_wall"] = iso(first["t"])
        d["detected_after_injection_s"] = round(wall_of(a.t) - first["t"], 3)
    return d
