"""Runs a search against a backend through the journal: start, resume, replay, undo.

The search is deterministic given the outcomes of its steps, so resuming is
replay: each step the search asks for is answered from the journal while the
journal has a recorded step for that configuration, and run for real after
that. A step whose trials were killed is closed first (exposure up to the last
heartbeat, no hang), so resuming neither loses exposure that was fsync'ed nor
counts any twice.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from repro.bisect.journal import JOURNAL_NAME, Journal, StepRecord, open_trials, read_steps
from repro.bisect.search import Decision, Outcome, Result, Search, Settings
from repro.bisect.space import Config, SearchSpace
from repro.errors import UsageError
from repro.formats import JOURNAL_FORMAT, version_of
from repro.scenario import Scenario


class Backend(Protocol):
    """Where a search's trials run: :class:`repro.executors.local.StressBackend` (this machine),
    :class:`repro.executors.ray_backend.RayBackend` (a Ray cluster) or :class:`repro.bisect.sim.SimBackend`
    (the simulator), chosen by :func:`repro.executors.factory.backend_for`."""

    # fresh=True (passed only when set): no server that served another configuration may run it
    def run_step(self, step: int, cfg: Config, cap: float, hooks: "Hooks") -> Outcome: ...

    def stop_all(self) -> None:
        """Interrupted: stop every trial running now (servers by process group)."""

    def close(self) -> None:
        """The search is over: release what is kept between steps (idle servers, actors, the cluster)."""


class Hooks:
    """What a backend calls while a step runs: every call is one fsync'ed journal line."""

    def __init__(self, journal: Journal, step: int, first_trial: int) -> None:
        self.j = journal
        self.step = step
        self._next = first_trial
        self._lock = threading.Lock()

    def trial_start(self, slot: int, **info: Any) -> int:
        with self._lock:
            tid = self._next
            self._next += 1
            self.j.append("trial", trial=tid, step=self.step, slot=slot, **info)
        return tid

    def heartbeat(self, trial: int, exposure: float) -> None:
        with self._lock:
            self.j.append("heartbeat", trial=trial, exposure=round(exposure, 3))

    def trial_end(self, trial: int, hung: bool, exposure: float, trial_time: float, skipped: bool = False,
                  detail: dict[str, Any] | None = None, uptime: float | None = None,
                  work: dict[str, Any] | None = None) -> None:
        """`uptime`: the server's continuous uptime at the stall or the end; `work`: what it had done by then."""
        extra: dict[str, Any] = {}
        if uptime is not None:
            extra["uptime"] = round(uptime, 3)
        if work:
            extra["work"] = work
        with self._lock:
            self.j.append("trial-end", trial=trial, hung=hung, exposure=round(exposure, 3),
                          trial_time=round(trial_time, 3), skipped=skipped, detail=detail or {}, **extra)

    @property
    def trials_used(self) -> int:
        return self._next


class JournaledRunner:
    """The search's step runner: replay recorded steps, then run new ones through the backend."""

    def __init__(self, journal: Journal, backend: Backend, recorded: list[StepRecord],
                 on_step: Callable[[str], None] | None = None) -> None:
        self.j = journal
        self.backend = backend
        self.recorded = [s for s in recorded if not s.undone]
        self.used: set[int] = set()
        self.next_step = max((s.step for s in recorded), default=-1) + 1
        self.next_trial = max((t.trial for s in recorded for t in s.trials), default=-1) + 1
        self.on_step = on_step or (lambda s: None)
        self.replayed = 0

    @property
    def replaying(self) -> bool:
        return any(s.step not in self.used for s in self.recorded)

    def run(self, cfg: Config, cap: float, fresh: bool = False) -> Outcome:
        for rec in self.recorded:
            if rec.step in self.used:
                continue
            if Config.from_dict(rec.config) == cfg:
                self.used.add(rec.step)
                self.replayed += 1
                return Outcome(rec.hung, rec.exposure, rec.wall, rec.trial_time, skipped=rec.skipped,
                               detail={"replayed": True},
                               runs=[t.run for t in rec.trials if t.ended and not t.skipped])
            break  # the next recorded step is for another config: the search diverged (undo); run anew
        step = self.next_step
        self.next_step += 1
        self.j.append("step", step=step, config=cfg.to_dict(), cap=round(cap, 3), describe=cfg.describe(),
                      **({"fresh_server": True} if fresh else {}))
        self.on_step(f"step {step}: {cfg.describe()} (up to {cap:.0f} s of clean exposure"
                     + ("; a fresh server: the hazard ages)" if fresh else ")"))
        hooks = Hooks(self.j, step, self.next_trial)
        t0 = time.monotonic()
        out = (self.backend.run_step(step, cfg, cap, hooks, fresh=True) if fresh
               else self.backend.run_step(step, cfg, cap, hooks))
        self.next_trial = hooks.trials_used
        self.j.append("step-end", step=step, hung=out.hung, exposure=round(out.exposure, 3),
                      wall=round(out.wall if out.wall else time.monotonic() - t0, 3),
                      trial_time=round(out.trial_time, 3), skipped=out.skipped)
        return out


@dataclass
class SearchSpec:
    space: SearchSpace
    settings: Settings
    mode: str  # "real" | "simulate"
    extra: dict[str, Any]  # the executor's knobs (simulate, parallel, heartbeat, reuse_server)
    base: Scenario | None = None  # a real search's base scenario (journaled as extra["scenario"])

    def identity(self) -> str:
        return self.space.identity()


def start_or_resume(run_dir: Path, spec: SearchSpec | None, resume: bool) -> tuple[Journal, SearchSpec, list[StepRecord]]:
    """Open the journal: a fresh search writes `start`; a resume checks identity and closes killed trials."""
    journal = Journal(Path(run_dir) / JOURNAL_NAME)
    header = journal.header() if journal.path.exists() else None
    if resume:
        if header is None:
            raise UsageError(f"--resume {run_dir}: no bisect journal there ({JOURNAL_NAME} missing or not a bisect journal)")
        version_of(JOURNAL_FORMAT, header, f"--resume {run_dir}: {JOURNAL_NAME}")  # foreign or future: one line
        from repro.bisect.space import Change

        saved = header["space"]
        space = SearchSpace(saved["concurrency"][0], saved["concurrency"][1],
                            tuple(Change.parse(c) for c in saved["changes"]), plain_storage=saved["plain_storage"],
                            max_trial=saved.get("max_trial"), budget=saved.get("budget"), step=saved.get("step", 1),
                            storage_ladder=tuple(saved.get("storage_ladder") or ()))
        if header["search"] != space.identity():
            raise UsageError(f"--resume {run_dir}: the journal's header is damaged (identity mismatch)")
        if spec is not None and spec.identity() != header["search"]:
            raise UsageError(f"--resume {run_dir}: that journal is from another search "
                             f"(search {header['search']}, these options make {spec.identity()}); "
                             "drop the space options or use a new --out")
        if spec is not None and spec.mode != header.get("mode"):
            raise UsageError(f"--resume {run_dir}: that journal is a {header.get('mode')} search, not {spec.mode}")
        # a journal from before the hazard model was tested resumes with the memoryless model it ran with
        saved_settings = {"hazard_model": "exponential", **header["settings"]}
        extra = dict(header.get("extra") or {})
        base = extra.pop("scenario", None)
        loaded = SearchSpec(space, Settings.from_dict(saved_settings), header.get("mode", "real"), extra,
                            None if base is None else Scenario.from_dict(base, f"{journal.path}: extra.scenario"))
        journal.open()
        steps = read_steps(journal)
        for tr in open_trials(steps):
            # its server died with the process: its uptime ends at the last heartbeat too
            journal.append("trial-end", trial=tr.trial, hung=False, exposure=tr.last_heartbeat, trial_time=0.0,
                           recovered=True, uptime=round(tr.uptime_start + tr.last_heartbeat, 3),
                           detail={"reason": "killed: exposure up to the last heartbeat"})
        for s in steps:
            if s.trials and s.wall == 0.0:
                journal.append("step-end", step=s.step, recovered=True, wall=0.0)
        journal.append("resume", text=f"resumed by pid {os.getpid()}")
        return journal, loaded, read_steps(journal)
    if spec is None:
        raise UsageError("nothing to search: give a space (--concurrency/--change or --space FILE) or --resume DIR")
    if header is not None:
        if header.get("search") != spec.identity():
            raise UsageError(f"{journal.path} holds a journal from another search: pick a new --out, "
                             f"or --resume {run_dir} with the same space")
        raise UsageError(f"{journal.path} already holds this search: continue it with --resume {run_dir}")
    journal.open()
    extra = {**spec.extra, **({"scenario": spec.base.to_dict()} if spec.base is not None else {})}
    journal.append("start", schema=JOURNAL_FORMAT.schema, version=JOURNAL_FORMAT.version, search=spec.identity(),
                   space=spec.space.to_dict(), settings=spec.settings.to_dict(), mode=spec.mode, extra=extra)
    return journal, spec, []


def run_search(journal: Journal, spec: SearchSpec, recorded: list[StepRecord], backend: Backend,
               report: Callable[[Decision], None], on_step: Callable[[str], None] | None = None) -> Result:
    ex = JournaledRunner(journal, backend, recorded, on_step)

    def rep(d: Decision) -> None:
        if not ex.replaying:
            journal.append("decision", phase=d.phase, text=d.text)
        report(d)

    search = Search(spec.space, spec.settings, ex, rep)
    result = search.run_all()
    journal.append("done", status=result.status,
                   text=result.config.describe() if result.config else result.status,
                   config=result.config.to_dict() if result.config else None,
                   hazard_model=(result.hazard or {}).get("model"))
    return result


def undo_last(run_dir: Path) -> str:
    """Void the last step's evidence (e.g. a stall that was a false alarm); the next --resume re-plans."""
    journal = Journal(Path(run_dir) / JOURNAL_NAME)
    if journal.header() is None:
        raise UsageError(f"{run_dir}: no bisect journal there")
    steps = [s for s in read_steps(journal) if not s.undone]
    if not steps:
        raise UsageError(f"{run_dir}: no step to undo")
    last = steps[-1]
    journal.open()
    journal.append("undo", step=last.step)
    journal.close()
    what = "hang" if last.hung else "clean"
    return f"undid step {last.step}: {Config.from_dict(last.config).describe()} ({what}, {last.exposure:.0f} s exposure)"
