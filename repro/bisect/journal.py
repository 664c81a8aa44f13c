"""The bisect journal: append-only, fsync'ed JSON lines in the run directory.

Every fact the search learns is one line, written and fsync'ed before the
search acts on it, so a crash, a kill -9 or a reboot loses at most the exposure
since the last heartbeat of the trial that was running. Records:

    start       the search's identity, space and settings (first line)
    resume      a later process continued the search
    step        the search asked for a configuration with a cap on clean exposure
                (``fresh_server``: no server another configuration aged may serve it)
    trial       one trial of a step started (slot, port; ``server`` and its continuous
                uptime ``uptime_start`` when the trial began: 0 on a fresh server)
    heartbeat   exposure so far of a running trial (every few seconds)
    trial-end   the trial's outcome: hung or clean, exposure, trial time, the server's
                continuous ``uptime`` at the stall (or the end) and the ``work`` it had done
                by then (requests, tokens, files written)
    decision    what the search concluded (informational: recomputed on resume)
    undo        void a step (a false alarm): its evidence no longer counts
    done        the search finished

On resume a trial with heartbeats and no ``trial-end`` was killed: it is closed
with a ``trial-end`` marked ``recovered`` whose exposure is that of its last
heartbeat -- never more than was run, and never counted twice -- and whose uptime is its
start's plus that exposure (its server died with the process: the next trial starts a new one).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro.bisect.hazard import Run
from repro.errors import UsageError
from repro.formats import JOURNAL_FORMAT

JOURNAL_NAME = "journal.jsonl"
VERSION = JOURNAL_FORMAT.version  # the start record's "schema"/"version" (repro.formats, FORMATS.md)


@dataclass
class TrialRecord:
    trial: int
    step: int
    hung: bool | None = None  # None: still open (killed)
    exposure: float = 0.0
    trial_time: float = 0.0
    skipped: bool = False
    recovered: bool = False
    last_heartbeat: float = 0.0
    ended: bool = False
    detail: dict[str, Any] = field(default_factory=dict)
    server: Any = None  # which server ran it (trials of one server share it)
    uptime_start: float = 0.0  # the server's continuous uptime (seconds of load) when the trial began
    uptime_end: float | None = None  # ... at the stall or the end (None: still open)
    cap: float | None = None  # the longest the trial could run
    work: dict[str, Any] = field(default_factory=dict)  # what the server had done by the end (cumulative)

    @property
    def run(self) -> Run:
        """The trial as a run of its server's uptime (journals without uptimes: a fresh server)."""
        end = self.uptime_end if self.uptime_end is not None else self.uptime_start + self.exposure
        return Run(self.uptime_start, end, bool(self.hung), self.cap)


@dataclass
class StepRecord:
    step: int
    config: dict[str, Any]
    cap: float
    wall: float = 0.0
    trials: list[TrialRecord] = field(default_factory=list)
    undone: bool = False

    @property
    def hung(self) -> bool:
        return any(t.hung for t in self.trials)

    @property
    def skipped(self) -> bool:
        return bool(self.trials) and all(t.skipped for t in self.trials)

    @property
    def exposure(self) -> float:
        return sum(t.exposure for t in self.trials)

    @property
    def trial_time(self) -> float:
        return sum(t.trial_time for t in self.trials)


class Journal:
    """Append-only JSON lines with fsync after every record."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._f = None

    # -- writing -----------------------------------------------------------
    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        self._f = open(self.path, "a", encoding="utf-8")

    def _repair_tail(self) -> None:
        """Drop a half-written last line (the process died inside a write)."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        if self._f is None:
            self.open()
        rec = {"type": kind, "t": round(time.time(), 3), **fields}
        assert self._f is not None
        self._f.write(json.dumps(rec, sort_keys=True) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        return rec

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    # -- reading -----------------------------------------------------------
    def records(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    yield json.loads(line)
                except ValueError:
                    # Only a torn last line is expected; anything else is a damaged journal.
                    rest = f.read()
                    if rest.strip():
                        raise UsageError(f"{self.path}: line {n} is not JSON: the journal is damaged") from None
                    return

    def header(self) -> dict[str, Any] | None:
        for rec in self.records():
            return rec if rec.get("type") == "start" else None
        return None


def read_steps(journal: Journal) -> list[StepRecord]:
    """The steps and trials the journal holds, with undo applied and killed trials left open."""
    steps: dict[int, StepRecord] = {}
    trials: dict[int, TrialRecord] = {}
    for rec in journal.records():
        kind = rec.get("type")
        if kind == "step":
            steps[rec["step"]] = StepRecord(rec["step"], rec["config"], rec["cap"])
        elif kind == "trial":
            tr = TrialRecord(rec["trial"], rec["step"], server=rec.get("server"),
                             uptime_start=float(rec.get("uptime_start", 0.0)),
                             cap=float(rec["cap"]) if rec.get("cap") is not None else None)
            trials[tr.trial] = tr
            steps[rec["step"]].trials.append(tr)
        elif kind == "heartbeat":
            tr = trials.get(rec["trial"])
            if tr is not None and not tr.ended:
                tr.last_heartbeat = max(tr.last_heartbeat, float(rec["exposure"]))
        elif kind == "trial-end":
            tr = trials.get(rec["trial"])
            if tr is None or tr.ended:
                continue  # never count a trial twice
            tr.ended = True
            tr.hung = bool(rec["hung"])
            tr.exposure = float(rec["exposure"])
            tr.trial_time = float(rec.get("trial_time", 0.0))
            tr.skipped = bool(rec.get("skipped", False))
            tr.recovered = bool(rec.get("recovered", False))
            tr.detail = rec.get("detail", {})
            tr.uptime_end = float(rec["uptime"]) if rec.get("uptime") is not None else tr.uptime_start + tr.exposure
            tr.work = rec.get("work") or {}
        elif kind == "step-end":
            if rec["step"] in steps:
                steps[rec["step"]].wall = float(rec.get("wall", 0.0))
        elif kind == "undo":
            if rec["step"] in steps:
                steps[rec["step"]].undone = True
    return [steps[k] for k in sorted(steps)]


def open_trials(steps: list[StepRecord]) -> list[TrialRecord]:
    return [t for s in steps for t in s.trials if not t.ended]


def total_exposure(journal: Journal, include_open: bool = True) -> float:
    """Exposure the journal accounts for: ended trials, plus the last heartbeat of open ones."""
    total = 0.0
    for s in read_steps(journal):
        for t in s.trials:
            if t.ended:
                total += t.exposure
            elif include_open:
                total += t.last_heartbeat
    return total


def work_text(work: dict[str, Any]) -> str:
    """'812 requests, 96,000 tokens, 800 files' from a trial-end's work (what is known of it)."""
    parts = []
    for key, unit in (("requests", "requests"), ("tokens", "tokens"), ("files", "files")):
        if work.get(key) is not None:
            parts.append(f"{int(work[key]):,} {unit}")
    return ", ".join(parts)


def describe(journal: Journal) -> list[str]:
    """Human-readable lines: `repro bisect --log DIR`."""
    from repro.units import format_duration

    out = []
    model = None
    for rec in journal.records():
        k = rec.get("type")
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(rec.get("t", 0)))
        if k == "start":
            out.append(f"{ts} start search {rec['search']} space {json.dumps(rec['space'], sort_keys=True)}")
        elif k == "step":
            fresh = " (fresh server)" if rec.get("fresh_server") else ""
            out.append(f"{ts} step {rec['step']}: {rec.get('describe', rec['config'])} cap {rec['cap']:.0f}s{fresh}")
        elif k == "trial-end":
            what = "SKIPPED" if rec.get("skipped") else ("HANG" if rec["hung"] else "clean")
            rcv = " (recovered after a crash: exposure up to the last heartbeat)" if rec.get("recovered") else ""
            up = ""
            if rec.get("uptime") is not None and not rec.get("skipped"):
                work = work_text(rec.get("work") or {})
                up = f"; server uptime {format_duration(rec['uptime'])}" + (f", {work}" if work else "")
                if rec["hung"]:
                    up += " at the stall"
            out.append(f"{ts}   trial {rec['trial']}: {what} after {rec['exposure']:.0f}s exposure{up}{rcv}")
        elif k == "decision":
            out.append(f"{ts} decision: {rec['text']}")
            if rec.get("phase") == "model":
                model = rec["text"]
        elif k in ("undo", "resume", "done"):
            out.append(f"{ts} {k} {rec.get('step', '') if k == 'undo' else rec.get('text', '')}".rstrip())
    if model:
        out.append(f"latest {model}")
    return out
