"""The bisect ``Backend`` on Ray: each trial a Ray actor, evidence into the driver's journal and run directory.

:class:`RayBackend` implements ``run_step(step, cfg, cap, hooks) -> Outcome`` like the local
:class:`repro.executors.local.StressBackend` and :class:`repro.bisect.sim.SimBackend`: a step is
`parallel` trials of one configuration, each with `cap / parallel` of clean exposure, and
exposure adds across them. For each trial:

1. an actor asking for ``--ray-cpus`` / ``--ray-gpus`` is placed (or one of the previous step's,
   still holding those resources, is reused); ``trial`` goes to the journal with the node it
   landed on (ip, node id, pid);
2. the node runs the trial (a simulated one in the actor, a real one as a node job that starts
   its own vLLM server with the same launcher and stops it by process group);
3. every heartbeat interval the driver asks the actor for its exposure so far and journals a
   ``heartbeat`` when it grew;
4. the trial directory comes home (object store, or the shared ``--artifact-dir``) into
   ``<run>/trials/stepNNNN-slotK`` and ``trial-end`` is journaled with the outcome.

A trial whose actor or node is lost is ``trial-end`` with ``skipped: true`` and the exposure of
its last heartbeat (never more), and the search goes on; a step whose every trial was lost is a
skipped step, which the search re-plans like a target that failed to start.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from repro.bisect.hazard import Run
from repro.bisect.search import Outcome
from repro.bisect.space import Config, SearchSpace
from repro.errors import ReproError, UsageError
from repro.executors.cluster import Ask, RaySession
from repro.executors.node import NodeRunner, unpack_into

LOST_ERRORS = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError", "WorkerCrashedError",
               "ObjectLostError", "OwnerDiedError", "ObjectFetchTimedOutError", "ActorUnschedulableError")


def is_lost(exc: BaseException) -> bool:
    """The actor or its node went away (not an error inside the trial)."""
    return any(type(exc).__name__ == n or n in [c.__name__ for c in type(exc).__mro__] for n in LOST_ERRORS)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for ln in text.splitlines():
        if ln.strip():
            return f"{type(exc).__name__}: {ln.strip()[:200]}"
    return type(exc).__name__


def get_outcome(ray: Any, ref: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(result, None), or (None, why) when the actor or its node was lost; a ReproError inside is re-raised."""
    try:
        return ray.get(ref), None
    except Exception as exc:  # noqa: BLE001
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ReproError):
            raise cause from None
        if not is_lost(exc):
            raise
        return None, first_line(exc)


def bring_home(art: dict[str, Any] | None, dest: Path) -> tuple[Path | None, dict[str, Any] | str | None]:
    """Put a node's evidence (object-store bytes, or a path in the shared --artifact-dir) into `dest`."""
    if not art or art.get("kind") == "none":
        return None, (art or {}).get("reason")
    if art["kind"] == "bytes":
        unpack_into(art["data"], dest)
        ev: dict[str, Any] = {"via": "object-store", "bytes": art["bytes"], "pack_s": art.get("seconds")}
        if art.get("left_out"):
            ev["left_on_node"] = {"path": art["node_path"], "files": art["left_out"]}
        return dest, ev
    src = Path(art["path"])
    if not src.exists():
        return None, {"via": "artifact-dir", "missing": str(src), "reason": "--artifact-dir is not shared with this machine"}
    shutil.copytree(src, dest, dirs_exist_ok=True)
    return dest, {"via": "artifact-dir", "path": str(src)}


class Trial:
    """Driver-side state of one trial on the cluster."""

    def __init__(self, slot: int, actor: Any, name: str) -> None:
        self.slot = slot
        self.actor = actor
        self.name = name
        self.where_ref: Any = None
        self.where: dict[str, Any] = {}
        self.run_ref: Any = None
        self.status_ref: Any = None
        self.tid: int | None = None
        self.t0 = time.monotonic()
        self.placed_s: float | None = None
        self.last_hb = 0.0
        self.phase = "scheduled"
        self.result: dict[str, Any] | None = None
        self.lost = False


class RayBackend:
    """Runs a step as `parallel` Ray actors; simulated (``sim``) or real (``trial``) jobs."""

    def __init__(self, session: RaySession, run_dir: Path, *, mode: str, parallel: int = 1, heartbeat: float = 5.0,
                 ask: Ask | None = None, model: Any = None, base: Any = None, space: SearchSpace | None = None,
                 artifact_dir: str | None = None, budget: int = 64 << 20, schedule_timeout: float = 900.0,
                 say: Any = None, owns_session: bool = False) -> None:
        if mode not in ("simulate", "real"):
            raise UsageError(f"unknown bisect mode {mode!r}")
        self.session = session
        self.owns_session = owns_session
        self.ray = session.ray
        self.run_dir = Path(run_dir)
        self.mode = mode
        self.parallel = max(1, parallel)
        self.heartbeat = heartbeat
        self.ask = ask or Ask()
        self.model = model
        self.base = base
        self.space = space if space is not None else (model.space if model is not None else None)
        self.artifact_dir = artifact_dir
        self.budget = budget
        self.schedule_timeout = schedule_timeout
        self.say = say or (lambda s: None)
        self.run_key = f"{self.run_dir.name}-{uuid.uuid4().hex[:8]}"
        self._remote = self.ray.remote(max_concurrency=4, max_restarts=0)(NodeRunner)
        self._live: list[Trial] = []
        self._idle: list[Any] = []  # actors between steps (placed, holding their resources)
        self.stats: list[dict[str, Any]] = []  # per trial: placement and transfer times (benchmarks, summary)

    # -- actors -------------------------------------------------------------------------
    def _take(self) -> Any:
        if self._idle:
            return self._idle.pop()
        return self._remote.options(**self.ask.options()).remote()

    def _kill(self, actor: Any) -> None:
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def release_idle(self) -> None:
        """Release the idle actors (and their CPUs/GPUs)."""
        while self._idle:
            self._kill(self._idle.pop())

    def close(self) -> None:
        """The search is over: release the idle actors, then disconnect from the cluster when this backend's
        factory connected it (``owns_session``)."""
        self.release_idle()
        if self.owns_session:
            self.session.close()

    # -- jobs ---------------------------------------------------------------------------
    def job(self, step: int, slot: int, cfg: Config, each: float, tid: int) -> dict[str, Any]:
        name = f"step{step:04d}-slot{slot}"
        if self.mode == "simulate":
            return {"kind": "sim", "model": self.model, "step": step, "slot": slot, "parallel": self.parallel,
                    "each": each, "rate": self.model.hazard.rate_of(self.model.space, cfg), "trial": tid}
        space, config = self.space.to_dict(), cfg.to_dict()
        if self.parallel > 1:  # as the local executor does: each slot its own storage directory (same node or not)
            space["plain_storage"] = f"{space['plain_storage'].rstrip('/')}/slot{slot}"
            for d in (space, config):
                d["changes"] = [f"{c.rstrip('/')}/slot{slot}" if c.startswith("storage=") else c for c in d["changes"]]
        return {"kind": "trial", "name": name, "trial": tid, "step": step, "slot": slot, "config": config,
                "space": space, "scenario": self.base, "duration": each,
                "heartbeat": self.heartbeat, "evidence": f"trials/{name}", "artifact_dir": self.artifact_dir,
                "run_key": self.run_key, "budget": self.budget}

    # -- the step -------------------------------------------------------------------------
    def run_step(self, step: int, cfg: Config, cap: float, hooks: Any, fresh: bool = False) -> Outcome:
        """One step on Ray: every trial is a job of its own with a server of its own (always fresh)."""
        ray = self.ray
        n = self.parallel
        each = cap / n
        t0 = time.monotonic()
        trials = [Trial(slot, self._take(), f"step{step:04d}-slot{slot}") for slot in range(n)]
        self._live = trials
        ok = False
        try:
            for t in trials:
                t.where_ref = t.actor.where.remote()
            for t in trials:
                self._place(t, step, cfg, each, hooks)
            self._wait(trials, hooks)
            ok = True
        except BaseException:
            self.stop_all()
            raise
        finally:
            for t in trials:  # a healthy actor keeps its resources for the next step; a lost one is gone
                if ok and not t.lost:
                    self._idle.append(t.actor)
                else:
                    self._kill(t.actor)
            self._live = []
        done = [t.result for t in trials if t.result is not None]
        tested = [r for r in done if not r["skipped"]]
        walls = [r.get("wall") for r in done]
        wall = max(walls) if done and all(w is not None for w in walls) else time.monotonic() - t0
        detail: dict[str, Any] = {"executor": "ray", "trials": [r.get("dir") or r.get("node") for r in done]}
        if self.mode == "simulate" and done:
            detail.update({k: v for k, v in done[0].get("detail", {}).items() if k in ("simulated", "rate_per_hour")})
        reasons = "; ".join(r.get("reason", "") for r in done if r["skipped"] and r.get("reason"))
        if reasons:
            detail["reason"] = reasons[:300]
        return Outcome(hung=any(r["hung"] for r in tested), exposure=sum(r["exposure"] for r in done), wall=wall,
                       trial_time=sum(r["trial_time"] for r in done), skipped=not tested, detail=detail,
                       runs=[Run(0.0, float(r["exposure"]), bool(r["hung"]), each) for r in tested])

    def _place(self, t: Trial, step: int, cfg: Config, each: float, hooks: Any) -> None:
        ray = self.ray
        try:
            t.where = ray.get(t.where_ref, timeout=self.schedule_timeout)
        except Exception as exc:  # noqa: BLE001
            if type(exc).__name__ == "GetTimeoutError":
                reason = f"not scheduled within {self.schedule_timeout:.0f} s (asks {self.ask.describe()})"
            else:
                reason = f"actor lost before it started: {first_line(exc)}"
            t.lost = True
            t.tid = hooks.trial_start(t.slot, executor="ray", cap=round(each, 3))
            self._end(t, hooks, {"hung": False, "exposure": 0.0, "trial_time": time.monotonic() - t.t0,
                                 "skipped": True, "reason": reason, "detail": {"reason": reason}})
            return
        t.placed_s = time.monotonic() - t.t0
        w = t.where
        t.tid = hooks.trial_start(t.slot, executor="ray", node=w["node_ip"], node_id=w["node_id"], host=w["hostname"],
                                  pid=w["pid"], cap=round(each, 3), dir=str(self.run_dir / "trials" / t.name))
        t.run_ref = t.actor.run.remote(self.job(step, t.slot, cfg, each, t.tid))
        if self.mode == "real":
            self.say(f"  trial {t.tid} (slot {t.slot}) on {w['node_ip']} pid {w['pid']}: {cfg.describe()}, "
                     f"up to {each:.0f} s of load")

    def _wait(self, trials: list[Trial], hooks: Any) -> None:
        ray = self.ray
        pending = {t.run_ref: t for t in trials if t.run_ref is not None and t.result is None}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=self.heartbeat)
            for ref in ready:
                self._collect(pending.pop(ref), hooks)
            for t in pending.values():
                self._poll(t, hooks)

    def _poll(self, t: Trial, hooks: Any) -> None:
        """Forward the trial's exposure so far to the journal (one heartbeat line when it grew)."""
        ray = self.ray
        if t.status_ref is None:
            t.status_ref = t.actor.status.remote()
        ready, _ = ray.wait([t.status_ref], timeout=min(2.0, self.heartbeat))
        if not ready:
            return  # busy node: ask again at the next beat
        ref, t.status_ref = t.status_ref, None
        try:
            st = ray.get(ref)
        except Exception:  # noqa: BLE001 - the actor died: its run ref will say so
            return
        t.phase = st.get("phase", t.phase)
        exp = float(st.get("exposure") or 0.0)
        if exp > t.last_hb and t.phase in ("loading", "stalled", "captured"):
            t.last_hb = exp
            hooks.heartbeat(t.tid, exp)

    def _collect(self, t: Trial, hooks: Any) -> None:
        r, why = get_outcome(self.ray, t.run_ref)
        if r is None:
            t.lost = True
            reason = f"lost: {why}"
            self.say(f"  trial {t.tid} on {t.where.get('node_ip', '?')}: actor lost ({reason}); skipped with "
                     f"{t.last_hb:.0f} s of exposure (its last heartbeat)")
            self._end(t, hooks, {"hung": False, "exposure": t.last_hb, "trial_time": time.monotonic() - t.t0,
                                 "skipped": True, "reason": reason, "detail": {"reason": reason, "lost": True}})
            return
        if r.get("stopped"):
            raise KeyboardInterrupt
        if r.get("usage"):
            raise UsageError(r.get("reason", "bad settings for a trial"))
        detail = dict(r.get("detail") or {})
        t_home = time.monotonic()
        home, evidence = bring_home(r.pop("artifact", None), self.run_dir / "trials" / t.name)
        if evidence is not None:
            detail["evidence"] = evidence
        transfer = time.monotonic() - t_home
        detail.update({"node": t.where.get("node_ip"), "node_id": t.where.get("node_id"), "pid": t.where.get("pid"),
                       "ray": {"placed_s": None if t.placed_s is None else round(t.placed_s, 3),
                               "transfer_s": round(transfer, 3)}})
        if home is not None:
            detail["dir"] = str(home)
        r["detail"] = detail
        r["dir"] = detail.get("dir")
        if r.get("skipped") and r.get("reason"):
            detail.setdefault("reason", r["reason"])
        self.stats.append({"trial": t.tid, "placed_s": t.placed_s, "transfer_s": round(transfer, 4),
                           "node_s": r.get("node_seconds"), "total_s": round(time.monotonic() - t.t0, 4)})
        self._end(t, hooks, r)
        if self.mode == "real":
            what = "STALL" if r["hung"] else ("skipped" if r["skipped"] else "clean")
            self.say(f"  trial {t.tid}: {what} after {r['exposure']:.0f} s of exposure; evidence in {home}")

    def _end(self, t: Trial, hooks: Any, r: dict[str, Any]) -> None:
        r.setdefault("trial_time", time.monotonic() - t.t0)
        t.result = r
        hooks.trial_end(t.tid, hung=bool(r["hung"]), exposure=float(r["exposure"]), trial_time=float(r["trial_time"]),
                        skipped=bool(r["skipped"]), detail=r.get("detail") or {},
                        uptime=r.get("uptime") if r.get("uptime") is not None else float(r["exposure"]),
                        work=r.get("work") or None)

    def stop_all(self, grace: float = 30.0) -> None:
        """Ask every running trial to stop (servers stopped by process group), then kill the actors."""
        ray = self.ray
        live = list(self._live)
        refs = []
        for t in live:
            try:
                refs.append(t.actor.stop.remote())
            except Exception:  # noqa: BLE001
                pass
        runs = [t.run_ref for t in live if t.run_ref is not None]
        if runs:
            try:
                ray.wait(runs, num_returns=len(runs), timeout=grace)
            except Exception:  # noqa: BLE001
                pass
        for t in live:
            self._kill(t.actor)
        self.release_idle()
