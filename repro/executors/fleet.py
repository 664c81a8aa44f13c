"""``repro stress --executor ray --replicas N``: N independent soaks on a Ray cluster.

Each replica is an actor asking for ``--ray-cpus``/``--ray-gpus`` that runs a whole stress run
(:func:`repro.load.runner.run_stress`, its own vLLM server on its node) with its own port,
storage directory and load seed. A fleet accumulates exposure N times faster than one box.

At the first classified stall the driver stops every other replica (SIGTERM: partial results
written, servers stopped by process group); with ``--keep-going`` only the stalled replica ends
and the others soak on to the end of ``--hours``. Each replica's directory comes home into
``<run>/replica-K`` (object store, or the shared ``--artifact-dir``); ``<run>/summary.json``
lists which node ran which replica, its outcome and exposure, and the fleet's totals.

A lost actor or node is a replica ``lost`` with the exposure of its last poll, never more.
"""

from __future__ import annotations

import copy
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from repro.bisect.stats import rate_upper_bound
from repro.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_STALL, EXIT_TARGET, UsageError
from repro.executors.cluster import Ask, RaySession
from repro.executors.node import NodeRunner
from repro.executors.ray_backend import bring_home, get_outcome
from repro.formats import FLEET_SUMMARY_FORMAT
from repro.scenario import Scenario
from repro.units import format_duration

FLEET_SCHEMA, FLEET_VERSION = FLEET_SUMMARY_FORMAT.schema, FLEET_SUMMARY_FORMAT.version


@dataclass
class Replica:
    index: int
    actor: Any
    name: str
    port: int
    seed: int
    where: dict[str, Any] = field(default_factory=dict)
    where_ref: Any = None
    run_ref: Any = None
    status_ref: Any = None
    phase: str = "scheduled"
    exposure: float = 0.0
    stall_class: str | None = None
    result: dict[str, Any] | None = None
    stopped_by_fleet: bool = False
    t0: float = field(default_factory=time.monotonic)

    def row(self) -> dict[str, Any]:
        r = self.result or {}
        return {"replica": self.index, "node": self.where.get("node_ip"), "node_id": self.where.get("node_id"),
                "host": self.where.get("hostname"), "pid": self.where.get("pid"), "port": self.port,
                "seed": self.seed, "state": self.phase, "outcome": r.get("outcome", self.phase),
                "exit_code": r.get("exit_code"), "exposure_s": round(self.exposure, 3),
                "stall_class": self.stall_class, "capture": r.get("capture"), "error": r.get("error"),
                "stopped_by_fleet": self.stopped_by_fleet, "dir": r.get("dir"), "evidence": r.get("evidence")}


class FleetView:
    """Per-replica state, total exposure, hangs so far and the rate bound: a rich table on a tty, else lines."""

    def __init__(self, stream: TextIO | None = None, every: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every
        self.clock = clock
        self._last: float | None = None  # None: nothing printed yet, the first update prints
        self._live: Any = None

    def render_lines(self, reps: list[Replica], elapsed: float) -> list[str]:
        total = sum(r.exposure for r in reps)
        hangs = sum(1 for r in reps if r.stall_class)
        bound = rate_upper_bound(hangs, total) * 3600 if total > 0 else None
        head = (f"[{format_duration(elapsed)}] fleet of {len(reps)}: exposure {format_duration(total)}, "
                f"hangs {hangs}" + (f", rate below {bound:.3g}/h (95%)" if bound is not None and hangs == 0 else
                                    f", rate ~{hangs / total * 3600:.3g}/h" if hangs and total else ""))
        rows = [f"  replica {r.index}: {r.phase:<9} {format_duration(r.exposure):>8} on "
                f"{r.where.get('node_ip', '?')} pid {r.where.get('pid', '?')} port {r.port}"
                + (f" ({r.stall_class})" if r.stall_class else "") for r in reps]
        return [head, *rows]

    def update(self, reps: list[Replica], elapsed: float, force: bool = False) -> None:
        lines = self.render_lines(reps, elapsed)
        if self.tty:
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            if self._live is None:
                self._live = Live(console=Console(file=self.stream), refresh_per_second=2)
                self._live.start()
            self._live.update(Text("\n".join(lines)))
            return
        now = self.clock()
        if force or self._last is None or now - self._last >= self.every:
            self._last = now
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def replica_scenario(scn: Scenario, i: int) -> Scenario:
    """Replica i: its own port (base + i), storage directory and load seed (base + i)."""
    s = copy.deepcopy(scn)
    s.server.port = scn.server.port + i
    s.server.storage = str(Path(scn.server.storage) / f"replica-{i}")
    s.load.seed = scn.load.seed + i
    s.url = None
    return s


@dataclass
class FleetResult:
    exit_code: int
    summary: dict[str, Any]
    path: Path


def run_fleet(scn: Scenario, run_dir: Path, session: RaySession, replicas: int, ask: Ask,
              keep_going: bool = False, artifact_dir: str | None = None, poll: float = 2.0,
              budget: int = 64 << 20, view: FleetView | None = None) -> FleetResult:
    if replicas < 1:
        raise UsageError(f"--replicas must be at least 1, got {replicas}")
    if scn.url:
        raise UsageError("--executor ray launches a server per replica: drop --url")
    ray = session.ray
    run_dir = Path(run_dir)
    view = view or FleetView()
    run_key = f"{run_dir.name}-{uuid.uuid4().hex[:8]}"
    remote = ray.remote(max_concurrency=4, max_restarts=0)(NodeRunner)
    reps = [Replica(i, remote.options(**ask.options()).remote(), f"replica-{i}", scn.server.port + i,
                    scn.load.seed + i) for i in range(replicas)]
    t_start = time.monotonic()
    first_stall: dict[str, Any] | None = None
    interrupted = False
    try:
        for r in reps:
            r.where_ref = r.actor.where.remote()
            job = {"kind": "stress", "name": r.name, "scenario": replica_scenario(scn, r.index),
                   "evidence": r.name, "artifact_dir": artifact_dir, "run_key": run_key, "budget": budget}
            r.run_ref = r.actor.run.remote(job)
        pending = {r.run_ref: r for r in reps}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=poll)
            for ref in ready:
                _collect(pending.pop(ref), run_dir, ray)
            for r in pending.values():
                _poll(r, ray)
            for r in reps:
                if r.stall_class and first_stall is None:
                    first_stall = {"replica": r.index, "class": r.stall_class, "node": r.where.get("node_ip"),
                                   "after_s": round(time.monotonic() - t_start, 3), "exposure_s": round(r.exposure, 3)}
                    view.update(reps, time.monotonic() - t_start, force=True)
                    if not keep_going:
                        for o in pending.values():
                            if o is not r and not o.stall_class:
                                o.stopped_by_fleet = True
                                o.actor.stop.remote()
            view.update(reps, time.monotonic() - t_start)
    except KeyboardInterrupt:
        interrupted = True
        live = [r for r in reps if r.result is None]
        for r in live:
            r.actor.stop.remote()
        refs = [r.run_ref for r in live]
        if refs:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=60)
            for r in live:
                if r.run_ref in ready:
                    _collect(r, run_dir, ray)
    finally:
        for r in reps:
            try:
                ray.kill(r.actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        view.update(reps, time.monotonic() - t_start, force=True)
        view.close()
    if first_stall is not None:  # the replica's own account of where the stall began, once it is home
        first_stall["exposure_s"] = round(reps[first_stall["replica"]].exposure, 3)
    total = sum(r.exposure for r in reps)
    hangs = sum(1 for r in reps if r.stall_class)
    codes = [(r.result or {}).get("exit_code") for r in reps]
    if interrupted:
        code = EXIT_INTERRUPTED
    elif hangs:
        code = EXIT_STALL
    elif all(c == EXIT_TARGET or (r.result or {}).get("outcome") == "lost" for c, r in zip(codes, reps)):
        code = EXIT_TARGET
    else:
        code = EXIT_OK
    summary = {"schema": FLEET_SCHEMA, "version": FLEET_VERSION, "executor": "ray",
               "ray_address": session.address, "replicas": [r.row() for r in reps],
               "keep_going": keep_going, "ask": {"cpus": ask.cpus, "gpus": ask.gpus},
               "duration_s": scn.load.duration, "wall_s": round(time.monotonic() - t_start, 3),
               "exposure_s": round(total, 3), "hangs": hangs,
               "rate_upper_95_per_h": round(rate_upper_bound(hangs, total) * 3600, 6) if total > 0 else None,
               "first_stall": first_stall, "exit_code": code, "interrupted": interrupted}
    path = run_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return FleetResult(code, summary, path)


def _poll(r: Replica, ray: Any) -> None:
    if r.where_ref is not None:
        ready, _ = ray.wait([r.where_ref], timeout=0)
        if ready:
            try:
                r.where = ray.get(r.where_ref)
            except Exception:  # noqa: BLE001 - the run ref says why
                pass
            r.where_ref = None
    if r.status_ref is None:
        r.status_ref = r.actor.status.remote()
    ready, _ = ray.wait([r.status_ref], timeout=0.5)
    if not ready:
        return
    ref, r.status_ref = r.status_ref, None
    try:
        st = ray.get(ref)
    except Exception:  # noqa: BLE001
        return
    r.phase = st.get("phase", r.phase)
    r.exposure = max(r.exposure, float(st.get("exposure") or 0.0))
    if st.get("stall_class"):
        r.stall_class = st["stall_class"]


def _collect(r: Replica, run_dir: Path, ray: Any) -> None:
    if r.where_ref is not None:
        try:
            r.where = ray.get(r.where_ref, timeout=5)
        except Exception:  # noqa: BLE001
            pass
        r.where_ref = None
    res, why = get_outcome(ray, r.run_ref)
    if res is None:
        r.phase = "lost"
        r.result = {"outcome": "lost", "error": why, "exit_code": None}
        return
    home, evidence = bring_home(res.pop("artifact", None), run_dir / r.name)
    res["evidence"] = evidence
    res["dir"] = str(home) if home is not None else None
    if res.get("hung"):
        r.stall_class = res.get("stall_class") or r.stall_class or "stall"
    r.exposure = float(res.get("exposure") or 0.0) if not res.get("skipped") else r.exposure
    outcome = res.get("outcome") or ("stopped" if res.get("interrupted") else "failed")
    if outcome == "interrupted" and r.stopped_by_fleet:
        outcome = "stopped"
    res["outcome"] = outcome
    r.phase = res.get("phase") or outcome
    if r.stopped_by_fleet and r.phase == "interrupted":
        r.phase = "stopped"
    r.result = res
