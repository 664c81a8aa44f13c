"""Real trials: a stress run (``repro.load.runner.run_stress``) on a server of the trial's own.

Each trial slot has its own vLLM server (its own port, storage directory and
CPU/GPU slice); a trial runs the load for at most the step's share of clean
exposure. A server that stayed clean is kept for the slot's next trial when that
trial's server settings are the same (a concurrency step, a client toggle): under
a memoryless hazard exposure on a warm server counts like any other, and the
start-up (a minute or more on CPU) is paid once. When the search finds that the
hazard ages it asks for fresh servers: a kept server then only continues the same
configuration (one longer run), never another one (its age would count for the
wrong configuration). A hung or dead server is stopped by process group and
replaced; ``--fresh-server`` starts one per trial. Each trial reports its server's
continuous uptime (seconds of load on that server, over every trial it served) at
its start and at its stall or end, and the work the server had done by then. Trials of one step run
side by side (``--parallel``); the first stall among them ends the others (their
exposure up to then counts as clean). The outcome:

* hung: the stress run detected a classified stall (exit 1); exposure is the
  load time before the stall began (not the detection delay);
* clean: no stall (exit 0); exposure is the load time;
* skipped: the server did not start or could not be reached (exit 3) -- the
  "could not test" of ``git bisect run`` (exit 125 from ``repro trial``).

While the load runs, a heartbeat with the exposure so far (time since the
stress run's ``start`` event) goes to the journal every few seconds, so a
kill -9 loses at most one heartbeat interval of exposure.
"""

from __future__ import annotations

import calendar
import dataclasses
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from repro.bisect.hazard import Run
from repro.bisect.search import Outcome
from repro.bisect.space import Config, SearchSpace, apply
from repro.errors import EXIT_INTERRUPTED, EXIT_STALL, EXIT_TARGET, ReproError, TargetError
from repro.scenario import Scenario
from repro.target import tinymodel
from repro.target.launcher import VllmServer, has_gpu, port_free


def cpu_slices(n: int) -> list[str]:
    """Split this process's CPUs into n contiguous VLLM_CPU_OMP_THREADS_BIND lists ('0-3', '4-7', ...)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = list(range(os.cpu_count() or 1))
    if n <= 1 or len(cpus) < n:
        return ["nobind"] * max(1, n)
    per = len(cpus) // n
    out = []
    for i in range(n):
        part = cpus[i * per:(i + 1) * per]
        out.append(",".join(str(c) for c in part))
    return out


def gpu_slices(n: int) -> list[str | None]:
    """Split the visible GPUs into n CUDA_VISIBLE_DEVICES lists (None: leave as is)."""
    if n <= 1:
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devs = [d for d in visible.split(",") if d] if visible else [str(p.name[len("nvidia"):]) for p in
                                                                  sorted(Path("/dev").glob("nvidia[0-9]*"))]
    if len(devs) < n:
        return [None] * n
    per = len(devs) // n
    return [",".join(devs[i * per:(i + 1) * per]) for i in range(n)]


def slot_env(slot: int, parallel: int) -> dict[str, str]:
    if has_gpu():
        g = gpu_slices(parallel)[slot]
        return {"CUDA_VISIBLE_DEVICES": g} if g is not None else {}
    return {"VLLM_CPU_OMP_THREADS_BIND": cpu_slices(parallel)[slot]}


def _parse_wall(w: str) -> float:
    whole, _, frac = w.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))


def exposure_so_far(trial_dir: Path, duration: float, now: float | None = None) -> float | None:
    """Exposure of a running stress run from its events.jsonl, never more than it will be credited.

    Time since the `start` event, capped at the duration (the drain after it is not load), at the
    onset of a suspected stall (`began` of a suspect/stalled detector event, `since` in older runs), and frozen once the
    run has stopped. None before the load has started.
    """
    now = time.time() if now is None else now
    started: float | None = None
    cap = duration
    stopped_at: float | None = None
    try:
        with open(trial_dir / "events.jsonl") as f:
            for line in f:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                kind = ev.get("event")
                if kind == "start" and ev.get("wall") and started is None:
                    started = _parse_wall(ev["wall"])
                elif kind == "detector":
                    onset = ev.get("began", ev.get("since"))
                    if ev.get("state") in ("suspect", "stalled") and onset is not None:
                        cap = min(duration, float(onset))
                    else:
                        cap = duration
                elif kind in ("stop", "stall") and stopped_at is None and ev.get("t") is not None:
                    stopped_at = float(ev["t"])
    except OSError:
        return None
    if started is None:
        return None
    run = now - started if stopped_at is None else stopped_at
    return max(0.0, min(run, cap))


def trial_scenario(base: Scenario, space: SearchSpace, cfg: Config, duration: float, port: int,
                   slot: int, parallel: int, trial_dir: Path) -> Scenario:
    model_dir = None
    if base.server.model is None:
        model_dir = tinymodel.ensure()
    elif Path(base.server.model).expanduser().exists():
        model_dir = Path(base.server.model).expanduser()
    n_layers = tinymodel.model_layers(model_dir) if model_dir else None
    scn = apply(base, space, cfg, n_layers)
    scn.load.duration = duration
    scn.load.requests = None
    scn.server.port = port
    scn.url = None
    if parallel > 1:
        scn.server.storage = str(Path(scn.server.storage) / f"slot{slot}")
    scn.server.env = {**scn.server.env, **slot_env(slot, parallel)}
    scn.out_dir = str(trial_dir)
    if scn.on_stall == "restart":
        scn.on_stall = "capture"
    return scn


def server_key(settings: Any) -> str:
    """What makes two trials' servers interchangeable: every launch setting but the port."""
    d = dataclasses.asdict(settings)
    d.pop("port", None)
    return json.dumps(d, sort_keys=True, default=str)


def reusable_injection(spec: str | None) -> bool:
    """A server may serve several trials unless its injected fault is timed from its start (stall-after=...).

    A hazard with an onset in engine steps is an engine that ages: a reused server carries its age on.
    """
    if not spec:
        return True
    return all(part.split("=")[0].strip() in ("hazard", "min_running", "seed", "onset") for part in spec.split(","))


@dataclasses.dataclass
class ServerLife:
    """What one server has done over the trials it served: continuous uptime (seconds of load) and work."""

    ident: str  # the directory of its first trial (its server.log is there)
    uptime: float = 0.0
    requests: int = 0
    tokens: int = 0
    files: int = 0
    last: Config | None = None  # the configuration of its last trial

    def work(self, server: VllmServer) -> dict[str, Any]:
        up = time.time() - server.ready_at if server.ready_at else None
        return {"requests": self.requests, "tokens": self.tokens, "files": self.files,
                "wall_since_ready_s": round(up, 1) if up is not None else None}


def pick_port(base_port: int, slot: int, host: str) -> int:
    for p in range(base_port + slot, base_port + slot + 200, max(1, 1)):
        if port_free(host, p):
            return p
    raise TargetError(f"no free port from {base_port + slot}")


class StressBackend:
    """Runs a step as `parallel` real stress runs of one configuration; exposure adds across them."""

    def __init__(self, base: Scenario, space: SearchSpace, run_dir: Path, parallel: int = 1,
                 heartbeat: float = 5.0, say: Any = None, reuse: bool = True) -> None:
        self.base = base
        self.reuse = reuse and reusable_injection(base.server.inject)
        self._idle: dict[int, tuple[str, VllmServer, ServerLife]] = {}  # slot -> (settings key, server, its life)
        self.space = space
        self.run_dir = Path(run_dir)
        self.parallel = max(1, parallel)
        self.heartbeat = heartbeat
        self.say = say or (lambda s: None)
        self._servers: list[VllmServer] = []
        self._lock = threading.Lock()

    def run_step(self, step: int, cfg: Config, cap: float, hooks: Any, fresh: bool = False) -> Outcome:
        n = self.parallel
        each = cap / n
        results: list[dict[str, Any] | None] = [None] * n
        errors: list[BaseException] = []
        t0 = time.monotonic()

        group_stop = threading.Event() if n > 1 else None  # the first stall ends the step's other trials

        def one(slot: int) -> None:
            try:
                results[slot] = self.run_trial(step, slot, cfg, each, hooks, group_stop, fresh)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)

        if n == 1:
            one(0)
        else:
            threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
            try:
                for t in threads:
                    t.start()
                for t in threads:
                    while t.is_alive():
                        t.join(0.5)
            except BaseException:
                self.stop_all()
                raise
        if errors:
            raise errors[0]
        done = [r for r in results if r is not None]
        tested = [r for r in done if not r["skipped"]]
        hung = any(r["hung"] for r in tested)
        return Outcome(hung=hung, exposure=sum(r["exposure"] for r in tested), wall=time.monotonic() - t0,
                       trial_time=sum(r["trial_time"] for r in done), skipped=not tested,
                       detail={"trials": [r["dir"] for r in done],
                               "reason": "; ".join(r.get("reason", "") for r in done if r["skipped"])[:300]},
                       runs=[Run(r.get("uptime_start", 0.0), r.get("uptime", r.get("uptime_start", 0.0) + r["exposure"]),
                                 r["hung"], each) for r in tested])

    def stop_all(self) -> None:
        """Stop every server of this backend: running trials' and idle ones kept for reuse."""
        with self._lock:
            servers = list(self._servers)
            self._servers.clear()
            self._idle.clear()
        for s in servers:
            s.stop(grace=5.0)

    def _server_for(self, slot: int, scn: Scenario, trial_dir: Path, cfg: Config,
                    fresh: bool = False) -> tuple[VllmServer, ServerLife, bool]:
        """The slot's idle server when it was started with the same settings and still runs (with `fresh`:
        only when its last trial was this configuration), else a new one. (server, its life, reused?)"""
        key = server_key(scn.server)
        with self._lock:
            idle = self._idle.pop(slot, None)
        if idle is not None:
            k, srv, life = idle
            if k == key and srv.alive() and (not fresh or life.last == cfg):
                scn.server.port = srv.settings.port
                return srv, life, True
            srv.stop(grace=5.0)
            with self._lock:
                if srv in self._servers:
                    self._servers.remove(srv)
        scn.server.port = pick_port(self.base.server.port, slot, self.base.server.host)
        server = VllmServer(scn.server, trial_dir)
        with self._lock:
            self._servers.append(server)
        return server, ServerLife(str(trial_dir)), False

    def run_trial(self, step: int, slot: int, cfg: Config, duration: float, hooks: Any,
                  group_stop: threading.Event | None = None, fresh: bool = False) -> dict[str, Any]:
        from repro.load.display import Progress
        from repro.load.runner import run_stress

        trial_dir = self.run_dir / "trials" / f"step{step:04d}-slot{slot}"
        trial_dir.mkdir(parents=True, exist_ok=True)
        scn = trial_scenario(self.base, self.space, cfg, duration, self.base.server.port, slot, self.parallel,
                             trial_dir)
        server, life, was_kept = self._server_for(slot, scn, trial_dir, cfg, fresh)  # none kept without reuse
        reused = life.ident if was_kept else None
        start_up = life.uptime
        port = scn.server.port
        tid = hooks.trial_start(slot, port=port, dir=str(trial_dir), cap=round(duration, 3), server=life.ident,
                                uptime_start=round(start_up, 3), **({"server_reused_from": reused} if reused else {}))
        t0 = time.monotonic()
        self.say(f"  trial {tid} (slot {slot}, port {port}): {cfg.describe()}, up to {duration:.0f} s of load; "
                 + (f"server reused (clean so far, same settings; log {reused}/server.log)" if reused
                    else f"log {trial_dir / 'server.log'}"))
        keep = False
        try:
            try:
                if not reused:
                    server.start()
                    server.wait_ready()
            except ReproError as exc:
                server.stop()
                hooks.trial_end(tid, hung=False, exposure=0.0, trial_time=time.monotonic() - t0, skipped=True,
                                detail={"reason": exc.message.splitlines()[0][:200], "dir": str(trial_dir)})
                return {"hung": False, "exposure": 0.0, "trial_time": time.monotonic() - t0, "skipped": True,
                        "reason": exc.message.splitlines()[0][:200], "dir": str(trial_dir),
                        "uptime_start": start_up, "uptime": start_up}
            box: dict[str, Any] = {}
            log = open(trial_dir / "progress.log", "w")

            def go() -> None:
                try:
                    box["res"] = run_stress(scn, trial_dir, server=server,
                                            progress=Progress(tty=False, every=60.0, stream=log),
                                            group_stop=group_stop)
                except BaseException as exc:  # noqa: BLE001
                    box["exc"] = exc

            th = threading.Thread(target=go, daemon=True)
            th.start()
            while th.is_alive():
                th.join(self.heartbeat)
                done = exposure_so_far(trial_dir, duration)
                if th.is_alive() and done is not None:
                    hooks.heartbeat(tid, done)
            log.close()
            if "exc" in box:
                raise box["exc"]
            res = box["res"]
            # The server's continuous uptime and work at the stall (or the end): the engine completes
            # nothing once it has stalled, so the counts at the end are those at the stall.
            life.uptime = start_up + (res.exposure_s if res.exit_code in (0, EXIT_STALL) else 0.0)
            tokens = (res.summary or {}).get("tokens") or {}
            life.requests += int((res.counts or {}).get("ok", 0) or 0)
            life.tokens += int(tokens.get("prompt", 0) or 0) + int(tokens.get("completion", 0) or 0)
            life.files += int((res.files or {}).get("verified", 0) or 0) + int((res.files or {}).get("bad", 0) or 0)
            life.last = cfg
            # A clean trial leaves a healthy server: the next trial of this slot with the same
            # settings may load it again (a hung or dead one is always replaced).
            keep = self.reuse and res.exit_code == 0 and server.alive()
        finally:
            if keep:
                with self._lock:
                    self._idle[slot] = (server_key(scn.server), server, life)
            else:
                server.stop(grace=5.0)
                with self._lock:
                    if server in self._servers:
                        self._servers.remove(server)
        spent = time.monotonic() - t0
        if res.exit_code == EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        skipped = res.exit_code == EXIT_TARGET or res.exit_code not in (0, EXIT_STALL)
        hung = res.exit_code == EXIT_STALL
        stall = (res.summary or {}).get("stall") or {}
        detail = {"dir": str(trial_dir), "outcome": res.outcome, "class": stall.get("class"),
                  "since_s": stall.get("since_s"), "exit_code": res.exit_code}
        if skipped:
            detail["reason"] = res.error or res.outcome
        work = life.work(server)
        hooks.trial_end(tid, hung=hung, exposure=0.0 if skipped else res.exposure_s, trial_time=spent,
                        skipped=skipped, detail=detail, uptime=life.uptime, work=work)
        self.say(f"  trial {tid}: {'STALL (' + str(stall.get('class')) + ')' if hung else res.outcome} after "
                 f"{res.exposure_s:.0f} s of exposure; server uptime {life.uptime:.0f} s of load"
                 + (" at the stall" if hung else ""))
        return {"hung": hung, "exposure": 0.0 if skipped else res.exposure_s, "trial_time": spent,
                "skipped": skipped, "reason": detail.get("reason", ""), "dir": str(trial_dir),
                "uptime_start": start_up, "uptime": life.uptime, "work": work}
