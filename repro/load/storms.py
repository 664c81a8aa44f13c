"""Abort storms during a stress run: episodes of the detector's ``abort-storm`` warning, for events and the summary.

Most requests ending in client timeouts (each aborts its request on the server) while goodput
collapses is a client policy problem, not a stall: the detector flags it as a warning
(:data:`~repro.monitor.detector.ABORT_STORM`), and this tracker turns the per-poll flags into
episodes -- one ``abort-storm`` event when one begins, ``abort-storm-end`` when it ends -- with
their count, length, peak abort share and lowest goodput.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from repro.monitor.detector import ABORT_STORM, Assessment


class StormTracker:
    def __init__(self, event: Callable[..., Any], say: Callable[[str], None], rel: Callable[[float], float]) -> None:
        self.event, self.say, self.rel = event, say, rel
        self.state: dict[str, Any] | None = None  # episodes so far (None: none yet)

    def track(self, a: Assessment) -> None:
        """One assessment: an abort-storm warning begins, goes on or ends (one event per episode)."""
        active = self.state is not None and self.state.get("active")
        if a.warning == ABORT_STORM:
            ev = a.evidence.get("abort_storm") or {}
            if self.state is None:
                self.state = {"episodes": 0, "first_s": round(self.rel(a.t), 3), "seconds": 0.0,
                              "peak_abort_share": 0.0, "min_goodput_per_s": None}
            s = self.state
            if not active:
                s["episodes"] += 1
                s["active"] = True
                s["_start"] = a.t
                self.event(ABORT_STORM, evidence=ev)
                self.say(f"warning: abort-storm: {ev.get('aborted')} of "
                         f"{ev.get('aborted', 0) + ev.get('completed', 0)} requests in "
                         f"{ev.get('window_s')} s ended in client timeouts")
            s["last_s"] = round(self.rel(a.t), 3)
            s["peak_abort_share"] = max(s["peak_abort_share"], ev.get("abort_share") or 0.0)
            g = ev.get("goodput_per_s")
            if g is not None:
                s["min_goodput_per_s"] = g if s["min_goodput_per_s"] is None else min(s["min_goodput_per_s"], g)
            s["last_evidence"] = ev
        elif active:
            assert self.state is not None
            self.state["active"] = False
            self.state["seconds"] = round(self.state["seconds"] + a.t - self.state.pop("_start", a.t), 3)
            self.event(f"{ABORT_STORM}-end")

    def summary(self, last: Assessment | None) -> dict[str, Any] | None:
        """summary.json's ``abort_storm`` (None: there was none); ``last``: the latest assessment."""
        if self.state is None:
            return None
        s = {k: v for k, v in self.state.items() if not k.startswith("_")}
        if s.pop("active", False) and "_start" in self.state and last is not None:
            s["seconds"] = round(s["seconds"] + last.t - self.state["_start"], 3)
        s["verdict"] = ("warning: most requests ended in client timeouts (each aborts the request on the server) "
                        "and goodput collapsed; the engine kept working -- a client policy problem, not a stall")
        return s
