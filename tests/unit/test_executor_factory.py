"""One factory chooses bisect's backend, and every backend it returns has the whole Backend protocol.

``repro bisect`` calls ``run_step``, ``stop_all`` (interrupted) and ``close`` (the end) on whatever
:func:`repro.executors.factory.backend_for` gives it, and probes nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from repro.bisect.driver import SearchSpec
from repro.bisect.search import Settings
from repro.bisect.sim import SimBackend, model_from_dict
from repro.bisect.space import SearchSpace
from repro.errors import UsageError
from repro.executors import factory
from repro.executors.cluster import Ask
from repro.executors.local import StressBackend
from repro.executors.options import ExecutorSettings
from repro.scenario import Scenario

LOCAL = ExecutorSettings("local", None, Ask(), None)
RAY = ExecutorSettings("ray", None, Ask(), None)


def spec(mode: str, **extra: object) -> SearchSpec:
    return SearchSpec(SearchSpace(1, 8), Settings(), mode, {"heartbeat": 2.0, "reuse_server": True, **extra})


def model(**hazard: object):
    return model_from_dict(SearchSpace(1, 8), {"rate_per_hour": 2.0, **hazard}, {"seed": 1})


def has_the_protocol(backend: object) -> bool:
    return all(callable(getattr(backend, m, None)) for m in ("run_step", "stop_all", "close"))


def test_a_real_search_runs_on_the_local_executor_with_its_base_scenario(tmp_path: Path) -> None:
    """Local + real: the stress backend, built from the base scenario with the spec's heartbeat and parallelism."""
    base = Scenario()
    b = factory.backend_for(spec("real"), tmp_path, LOCAL, 3, lambda s: None, base=base)
    assert isinstance(b, StressBackend) and has_the_protocol(b)
    assert (b.base, b.parallel, b.heartbeat, b.run_dir) == (base, 3, 2.0, tmp_path)
    b.close()  # nothing was started: closing stops nothing and does not fail


def test_a_simulated_search_runs_on_the_simulator_and_honours_fresh_servers(tmp_path: Path) -> None:
    """Local + simulate: the simulator's backend; --fresh-server (reuse_server false) turns its reuse off."""
    m = model()
    b = factory.backend_for(spec("simulate", reuse_server=False), tmp_path, LOCAL, 2, lambda s: None, model=m)
    assert isinstance(b, SimBackend) and has_the_protocol(b)
    assert b.parallel == 2 and m.reuse is False
    b.stop_all()
    b.close()


def test_a_real_search_without_its_scenario_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="base scenario"):
        factory.backend_for(spec("real"), tmp_path, LOCAL, 1, lambda s: None)


def test_ray_refuses_an_aging_simulation_before_connecting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray draws memoryless simulated trials only: an aging model is a usage error, and no cluster is touched."""
    import repro.executors.cluster as cluster

    def no_connect(*a: object, **k: object) -> None:
        raise AssertionError("connected to Ray")

    monkeypatch.setattr(cluster, "connect", no_connect)
    with pytest.raises(UsageError, match="memoryless"):
        factory.backend_for(spec("simulate"), tmp_path, RAY, 1, lambda s: None, model=model(shape="weibull", k=2.0))
