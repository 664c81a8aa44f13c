"""The one place a bisect backend is chosen: this machine, a Ray cluster, or the simulator.

``--executor local`` (the default) runs real trials with :class:`repro.executors.local.StressBackend` and
simulated ones with :class:`repro.bisect.sim.SimBackend`; ``--executor ray`` runs either kind as Ray actors
(:class:`repro.executors.ray_backend.RayBackend`). Whatever is chosen is a :class:`repro.bisect.driver.Backend`:
the command calls ``run_step``, ``stop_all`` when interrupted and ``close`` at the end, and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from repro.bisect.driver import Backend, SearchSpec
from repro.errors import UsageError
from repro.executors.options import ExecutorSettings
from repro.scenario import Scenario

if TYPE_CHECKING:
    from repro.bisect.sim import SimModel


def backend_for(spec: SearchSpec, run_dir: Path, ex: ExecutorSettings, parallel: int, say: Callable[[str], None],
                base: Scenario | None = None, model: "SimModel | None" = None) -> Backend:
    """The backend for a search: ``base`` is the real search's scenario, ``model`` the simulated one's."""
    heartbeat = float(spec.extra.get("heartbeat", 5.0))
    reuse = bool(spec.extra.get("reuse_server", True))
    if spec.mode == "simulate" and model is None:
        from repro.bisect.sim import load_model

        model = load_model(spec.extra["simulate"])
    if ex.kind == "ray":
        return _ray(spec, run_dir, ex, parallel, heartbeat, say, base, model)
    if model is not None:
        from repro.bisect.sim import SimBackend

        model.reuse = model.reuse and reuse
        return SimBackend(model, parallel)
    from repro.executors.local import StressBackend

    if base is None:
        raise ValueError("a real search runs from its base scenario: pass base")
    return StressBackend(base, spec.space, run_dir, parallel, heartbeat, say, reuse=reuse)


def _ray(spec: SearchSpec, run_dir: Path, ex: ExecutorSettings, parallel: int, heartbeat: float,
         say: Callable[[str], None], base: Scenario | None, model: "SimModel | None") -> Backend:
    if model is not None and not model.hazard.memoryless:
        raise UsageError("--executor ray --simulate draws memoryless trials only: simulate an aging hazard "
                         "(shape = weibull/onset) with the local executor")
    from repro.executors.cluster import connect
    from repro.executors.ray_backend import RayBackend

    session = connect(ex.address, ex.ask, parallel)
    if session.note:
        say(f"ray: {session.note}")
    if model is not None:
        backend = RayBackend(session, run_dir, mode="simulate", parallel=parallel, heartbeat=heartbeat, ask=ex.ask,
                             model=model, say=say, owns_session=True)
    else:
        backend = RayBackend(session, run_dir, mode="real", parallel=parallel, heartbeat=heartbeat, ask=ex.ask,
                             base=base, space=spec.space, artifact_dir=ex.artifact_dir, say=say, owns_session=True)
    say(f"executor: ray ({ex.address or 'local instance'}, {len(session.nodes)} node(s)), "
        f"each trial asks {ex.ask.describe()}")
    return backend
