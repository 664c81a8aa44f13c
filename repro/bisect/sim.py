"""Simulated trials: draws from a known hazard function in virtual time.

``repro bisect --simulate MODEL.toml`` replaces real stress runs by this. The
model says which configurations hang and how fast::

    [space]                       # the search space (as in a bisect TOML file)
    concurrency = [1, 32]
    changes = ["extract=4", "storage=/mnt/nfs", "timeout=120"]

    [hazard]
    mean_time_to_hang = "2h"      # at the baseline (or rate_per_hour = 0.5)
    threshold = 12                # hangs only at concurrency >= 12 (default: the low end)
    requires = ["storage"]        # change names (or exact changes) that must all be present
    rate_at_threshold = 0.5       # rate at the threshold relative to the top (linear between; default 1)
    storage_from = "/data/hs"     # with a storage ladder: this rung and every later one hang (default: the last)

    [sim]
    seed = 1
    overhead = "90s"              # server start + warm-up, charged to every trial
    speed = 0                     # 0: instant; N: run N virtual seconds per real second (heartbeats)

The ground truth minimal configuration is ``(threshold, the required changes)``.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro.bisect.search import Outcome
from repro.bisect.space import Change, Config, SearchSpace, space_from_toml
from repro.errors import UsageError
from repro.scenario import load_toml
from repro.units import parse_duration


@dataclass
class Hazard:
    rate: float  # per second at the top of the range with the required changes
    threshold: int
    requires: tuple[str, ...] = ()
    rate_at_threshold: float = 1.0
    storage_from: str | None = None  # with a storage ladder: the plainest path that hangs (later rungs hang too)

    def required(self, space: SearchSpace) -> frozenset[Change]:
        out = set()
        for r in self.requires:
            hits = [c for c in space.changes if str(c) == r or c.name == r]
            if not hits:
                raise UsageError(f"hazard requires {r!r}, which is not one of the space's changes")
            out.update(hits)
        return frozenset(out)

    def _present(self, space: SearchSpace, cfg: Config, req: Change) -> bool:
        if req.name == "storage" and self.storage_from is not None:
            rungs = space.storage_rungs
            lowest = rungs.index(self.storage_from)
            return any(c.name == "storage" and c.value in rungs and rungs.index(c.value) >= lowest
                       for c in cfg.changes)
        return req in cfg.changes

    def rate_of(self, space: SearchSpace, cfg: Config) -> float:
        if cfg.concurrency < self.threshold or not all(self._present(space, cfg, r) for r in self.required(space)):
            return 0.0
        if space.hi == self.threshold:
            return self.rate
        frac = (cfg.concurrency - self.threshold) / (space.hi - self.threshold)
        return self.rate * (self.rate_at_threshold + (1.0 - self.rate_at_threshold) * frac)

    def truth(self, space: SearchSpace) -> Config:
        vals = [v for v in space.values if v >= self.threshold]
        req = self.required(space)
        if self.storage_from is not None:
            req = frozenset(Change("storage", self.storage_from) if c.name == "storage" else c for c in req)
        return Config(vals[0] if vals else space.hi, req)


@dataclass
class SimModel:
    space: SearchSpace
    hazard: Hazard
    seed: int = 0
    overhead: float = 90.0
    speed: float = 0.0
    heartbeat: float = 0.05  # real seconds between heartbeats when speed > 0
    extra: dict[str, Any] = field(default_factory=dict)


def load_model(path: str | Path) -> SimModel:
    d = load_toml(path)
    if "hazard" not in d:
        raise UsageError(f"{path}: a simulation model needs a [hazard] table (mean_time_to_hang, threshold, requires)")
    space = space_from_toml(path)
    return model_from_dict(space, d["hazard"], d.get("sim", {}), str(path))


def model_from_dict(space: SearchSpace, hz: dict[str, Any], sim: dict[str, Any], where: str = "model") -> SimModel:
    if "rate_per_hour" in hz:
        rate = float(hz["rate_per_hour"]) / 3600.0
    elif "mean_time_to_hang" in hz:
        rate = 1.0 / parse_duration(hz["mean_time_to_hang"], "mean_time_to_hang")
    else:
        raise UsageError(f"{where}: [hazard] needs rate_per_hour or mean_time_to_hang")
    if rate <= 0:
        raise UsageError(f"{where}: the baseline must hang (a positive rate)")
    hazard = Hazard(rate, int(hz.get("threshold", space.lo)), tuple(hz.get("requires", ())),
                    float(hz.get("rate_at_threshold", 1.0)), hz.get("storage_from"))
    req = hazard.required(space)
    if hazard.storage_from is not None:
        if hazard.storage_from not in space.storage_rungs:
            raise UsageError(f"{where}: storage_from {hazard.storage_from!r} is not one of the storage paths "
                             f"({', '.join(space.storage_rungs) or 'none'})")
        if not any(c.name == "storage" for c in req):
            raise UsageError(f"{where}: storage_from needs requires = [\"storage\", ...]")
    if not space.lo <= hazard.threshold <= space.hi:
        raise UsageError(f"{where}: threshold {hazard.threshold} is outside the range {space.lo}-{space.hi}")
    return SimModel(space, hazard, int(sim.get("seed", 0)), parse_duration(sim.get("overhead", 90), "overhead"),
                    float(sim.get("speed", 0.0)), float(sim.get("heartbeat", 0.05)))


class SimBackend:
    """Runs a step of `parallel` simulated trials; exposure adds across them."""

    def __init__(self, model: SimModel, parallel: int = 1) -> None:
        self.m = model
        self.parallel = max(1, parallel)

    def run_step(self, step: int, cfg: Config, cap: float, hooks: Any) -> Outcome:
        rng = random.Random(f"{self.m.seed}:{step}")
        lam = self.m.hazard.rate_of(self.m.space, cfg)
        n = self.parallel
        each = cap / n
        draws = [rng.expovariate(lam) if lam > 0 else math.inf for _ in range(n)]
        first = min(draws)
        hung = first < each
        run = first if hung else each
        ids = [hooks.trial_start(slot) for slot in range(n)]
        if self.m.speed > 0:
            self._realtime(ids, run, hooks)
        ov = self.m.overhead
        for slot, tid in enumerate(ids):
            hooks.trial_end(tid, hung=hung and draws[slot] == first, exposure=run, trial_time=ov + run)
        return Outcome(hung, exposure=n * run, wall=ov + run, trial_time=n * (ov + run),
                       detail={"simulated": True, "rate_per_hour": lam * 3600})

    def _realtime(self, ids: list[int], run: float, hooks: Any) -> None:
        """Let virtual time pass at `speed`, with heartbeats (for crash/resume tests)."""
        speed, hb = self.m.speed, self.m.heartbeat
        time.sleep(self.m.overhead / speed)
        t0 = time.monotonic()
        while True:
            done = (time.monotonic() - t0) * speed
            if done >= run:
                return
            for tid in ids:
                hooks.heartbeat(tid, done)
            time.sleep(min(hb, (run - done) / speed))
