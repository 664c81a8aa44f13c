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
    shape = "exponential"         # memoryless (default), "weibull" or "onset" (see below)

    [sim]
    seed = 1
    overhead = "90s"              # server start + warm-up, charged to every trial
    speed = 0                     # 0: instant; N: run N virtual seconds per real second (heartbeats)
    reuse = true                  # a clean server serves the slot's next trial with the same server settings

Hazards that need the server to age (a server's state is kept while it is reused)::

    shape = "weibull"             # time to hang on one server ~ Weibull(k) with the mean above
    k = 4                         # 1: memoryless; 2-4: ages

    shape = "onset"               # no hang before `onset` of continuous uptime, then the rate above
    onset = "5h"
    mean_time_to_hang = "30m"     # after the onset

    shape = "onset"               # ... or the onset is a resource that grows with load reaching a level
    resource = "orphaned files"
    level = 50000
    growth_per_hour = 10000       # at the top of the range, in proportion to concurrency below it
    resource_requires = ["timeout"]   # changes the growth needs (default: none); the hang itself then
                                      # needs only `requires`, so a server aged with them hangs without them

A configuration hanging at a fraction f of the baseline's rate ages f times as fast: a Weibull
server's age and an uptime onset run at f per second of load, so its time to hang is the
baseline's stretched by 1/f. The ground truth minimal configuration is ``(threshold, the
required changes)`` (plus ``resource_requires``).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro.bisect.hazard import Run
from repro.bisect.search import Outcome
from repro.bisect.space import Change, Config, SearchSpace, space_from_toml
from repro.errors import UsageError
from repro.scenario import load_toml
from repro.units import parse_duration


SHAPES = ("exponential", "weibull", "onset")


@dataclass
class Hazard:
    rate: float  # per second at the top of the range with the required changes (onset: after the onset)
    threshold: int
    requires: tuple[str, ...] = ()
    rate_at_threshold: float = 1.0
    storage_from: str | None = None  # with a storage ladder: the plainest path that hangs (later rungs hang too)
    shape: str = "exponential"
    k: float = 1.0  # weibull shape
    onset: float = 0.0  # onset: seconds of continuous uptime at the baseline before any hang
    resource: str | None = None  # onset: the level of this resource instead of uptime
    level: float = 0.0
    growth: float = 0.0  # resource units per second of load at the top of the range
    resource_requires: tuple[str, ...] = ()

    def _changes(self, space: SearchSpace, names: tuple[str, ...], what: str) -> frozenset[Change]:
        out = set()
        for r in names:
            hits = [c for c in space.changes if str(c) == r or c.name == r]
            if not hits:
                raise UsageError(f"hazard {what} {r!r}, which is not one of the space's changes")
            out.update(hits)
        return frozenset(out)

    def required(self, space: SearchSpace) -> frozenset[Change]:
        return self._changes(space, self.requires, "requires")

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

    def growth_of(self, space: SearchSpace, cfg: Config) -> float:
        """Resource growth per second of load at this configuration (0 without its required changes)."""
        if not all(r in cfg.changes for r in self._changes(space, self.resource_requires, "resource_requires")):
            return 0.0
        return self.growth * cfg.concurrency / space.hi

    def truth(self, space: SearchSpace) -> Config:
        vals = [v for v in space.values if v >= self.threshold]
        req = self.required(space)
        if self.storage_from is not None:
            req = frozenset(Change("storage", self.storage_from) if c.name == "storage" else c for c in req)
        req = req | self._changes(space, self.resource_requires, "resource_requires")
        return Config(vals[0] if vals else space.hi, req)

    @property
    def memoryless(self) -> bool:
        return self.shape == "exponential"

    def describe(self) -> str:
        from repro.units import format_duration as fd

        mtth = fd(1.0 / self.rate)
        if self.shape == "weibull":
            return f"Weibull k={self.k:g}, mean time to hang {mtth} on one server"
        if self.shape == "onset":
            if self.resource:
                return (f"no hang until {self.resource} reach {self.level:g} (growing {self.growth * 3600:g}/h at the "
                        f"top), then a mean of {mtth}")
            return f"no hang before {fd(self.onset)} of continuous uptime, then a mean of {mtth}"
        return f"memoryless, mean time to hang {mtth}"


@dataclass
class ServerClock:
    """A simulated server's state while it is reused: uptime, age (or resource level) and hazard so far."""

    key: frozenset[Change]  # what it was launched with (its server-side changes)
    last: Config | None = None  # the configuration of its last trial
    uptime: float = 0.0  # seconds of load
    age: float = 0.0  # weibull/onset: seconds at the baseline's pace; resource: its level
    hazard: float = 0.0  # cumulative hazard after the onset
    budget: float = math.inf  # weibull: the age at which it hangs; onset: the hazard at which it hangs
    ident: str = ""  # the step and slot that started it (unique across a resumed search)

    def time_to_hang(self, hz: Hazard, space: SearchSpace, cfg: Config) -> float:
        """Seconds of load at `cfg` from now until this server hangs (inf: never at this configuration)."""
        f = hz.rate_of(space, cfg) / hz.rate
        if f <= 0:
            return math.inf
        if hz.shape == "weibull":
            return max(0.0, (self.budget - self.age) / f)
        grow = hz.growth_of(space, cfg) if hz.resource else f
        target = hz.level if hz.resource else hz.onset
        if self.age >= target:
            t_on = 0.0
        elif grow <= 0:
            return math.inf
        else:
            t_on = (target - self.age) / grow
        return t_on + max(0.0, self.budget - self.hazard) / (hz.rate * f)

    def advance(self, hz: Hazard, space: SearchSpace, cfg: Config, t: float) -> None:
        """`t` seconds of load at `cfg` without a hang."""
        f = hz.rate_of(space, cfg) / hz.rate
        self.uptime += t
        self.last = cfg
        if hz.shape == "weibull":
            self.age += f * t
            return
        if hz.shape != "onset":
            return
        grow = hz.growth_of(space, cfg) if hz.resource else f
        target = hz.level if hz.resource else hz.onset
        before = self.age
        self.age += grow * t
        if f > 0:
            t_on = 0.0 if before >= target else (math.inf if grow <= 0 else (target - before) / grow)
            self.hazard += hz.rate * f * max(0.0, t - t_on)


def server_changes(cfg: Config) -> frozenset[Change]:
    """The changes a server is launched with (the client-only ones do not need a new server)."""
    from repro.bisect.space import CLIENT_TOGGLES

    return frozenset(c for c in cfg.changes if c.name not in CLIENT_TOGGLES)


class SimServers:
    """The servers of simulated trial slots: reused like the real backend's (clean, same launch settings)."""

    def __init__(self, hazard: Hazard, space: SearchSpace, reuse: bool = True) -> None:
        self.hz = hazard
        self.space = space
        self.reuse = reuse
        self.idle: dict[int, ServerClock] = {}
        self.started = 0

    def server(self, slot: int, cfg: Config, rng: random.Random, fresh: bool = False,
               name: str = "") -> ServerClock:
        """The slot's clean server when it may serve `cfg`, else a new one (its hang drawn now)."""
        key = server_changes(cfg)
        old = self.idle.pop(slot, None)
        if old is not None and self.reuse and old.key == key and (not fresh or old.last == cfg):
            return old
        self.started += 1
        srv = ServerClock(key, ident=name or f"server{self.started}")
        if self.hz.shape == "weibull":
            srv.budget = self.hz_scale() * rng.expovariate(1.0) ** (1.0 / self.hz.k)
        elif self.hz.shape == "onset":
            srv.budget = rng.expovariate(1.0)
        return srv

    def hz_scale(self) -> float:
        """Weibull scale whose mean is the hazard's mean time to hang."""
        return (1.0 / self.hz.rate) / math.gamma(1.0 + 1.0 / self.hz.k)

    def keep(self, slot: int, srv: ServerClock) -> None:
        self.idle[slot] = srv

    def trial(self, slot: int, cfg: Config, cap: float, rng: random.Random, fresh: bool = False,
              memoryless_draw: float | None = None, name: str = "") -> tuple[ServerClock, float, float]:
        """(server, uptime at the start, seconds of load to its hang: inf when it does not hang at `cfg`)."""
        srv = self.server(slot, cfg, rng, fresh, name)
        start = srv.uptime
        if self.hz.memoryless:
            t = memoryless_draw if memoryless_draw is not None else (
                rng.expovariate(self.hz.rate_of(self.space, cfg)) if self.hz.rate_of(self.space, cfg) > 0 else math.inf)
        else:
            t = srv.time_to_hang(self.hz, self.space, cfg)
        return srv, start, t

    def finish(self, slot: int, srv: ServerClock, cfg: Config, run: float, hung: bool) -> None:
        if hung:
            return  # a hung server is replaced
        srv.advance(self.hz, self.space, cfg, run)
        if self.reuse:
            self.keep(slot, srv)


@dataclass
class SimModel:
    space: SearchSpace
    hazard: Hazard
    seed: int = 0
    overhead: float = 90.0
    speed: float = 0.0
    heartbeat: float = 0.05  # real seconds between heartbeats when speed > 0
    reuse: bool = True  # a clean server serves the slot's next trial with the same server settings
    extra: dict[str, Any] = field(default_factory=dict)


def load_model(path: str | Path) -> SimModel:
    d = load_toml(path)
    if "hazard" not in d:
        raise UsageError(f"{path}: a simulation model needs a [hazard] table (mean_time_to_hang, threshold, requires)")
    space = space_from_toml(path)
    return model_from_dict(space, d["hazard"], d.get("sim", {}), str(path))


def model_from_dict(space: SearchSpace, hz: dict[str, Any], sim: dict[str, Any], where: str = "model") -> SimModel:
    known = {"rate_per_hour", "mean_time_to_hang", "threshold", "requires", "rate_at_threshold", "storage_from",
             "shape", "k", "onset", "resource", "level", "growth_per_hour", "resource_requires"}
    unknown = set(hz) - known
    if unknown:
        raise UsageError(f"{where}: unknown [hazard] key(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(known))})")
    if "rate_per_hour" in hz:
        rate = float(hz["rate_per_hour"]) / 3600.0
    elif "mean_time_to_hang" in hz:
        rate = 1.0 / parse_duration(hz["mean_time_to_hang"], "mean_time_to_hang")
    else:
        raise UsageError(f"{where}: [hazard] needs rate_per_hour or mean_time_to_hang")
    if rate <= 0:
        raise UsageError(f"{where}: the baseline must hang (a positive rate)")
    shape = str(hz.get("shape", "exponential")).lower()
    if shape not in SHAPES:
        raise UsageError(f"{where}: [hazard] shape {shape!r}: use one of {', '.join(SHAPES)}")
    k = float(hz.get("k", 1.0))
    if shape == "weibull" and not 0.1 <= k <= 50:
        raise UsageError(f"{where}: [hazard] k = {k:g}: a Weibull shape between 0.1 and 50 (1 is memoryless)")
    if shape != "weibull" and "k" in hz:
        raise UsageError(f"{where}: [hazard] k is the Weibull shape: it needs shape = \"weibull\"")
    onset_keys = {"onset", "resource", "level", "growth_per_hour", "resource_requires"} & set(hz)
    if shape != "onset" and onset_keys:
        raise UsageError(f"{where}: [hazard] {', '.join(sorted(onset_keys))} need(s) shape = \"onset\"")
    onset = parse_duration(hz["onset"], "onset") if "onset" in hz else 0.0
    resource = hz.get("resource")
    level = float(hz.get("level", 0.0))
    growth = float(hz.get("growth_per_hour", 0.0)) / 3600.0
    if shape == "onset":
        if resource is None and "onset" not in hz:
            raise UsageError(f"{where}: shape = \"onset\" needs onset = DURATION (no hang before that much "
                             "continuous uptime) or resource, level and growth_per_hour")
        if resource is not None and ("onset" in hz or level <= 0 or growth <= 0):
            raise UsageError(f"{where}: a resource onset needs level > 0 and growth_per_hour > 0 (and no onset "
                             "duration: the level is reached when it is reached)")
    hazard = Hazard(rate, int(hz.get("threshold", space.lo)), tuple(hz.get("requires", ())),
                    float(hz.get("rate_at_threshold", 1.0)), hz.get("storage_from"), shape, k, onset,
                    str(resource) if resource is not None else None, level, growth,
                    tuple(hz.get("resource_requires", ())))
    req = hazard.required(space)
    hazard.truth(space)  # resource_requires name the space's changes
    if hazard.storage_from is not None:
        if hazard.storage_from not in space.storage_rungs:
            raise UsageError(f"{where}: storage_from {hazard.storage_from!r} is not one of the storage paths "
                             f"({', '.join(space.storage_rungs) or 'none'})")
        if not any(c.name == "storage" for c in req):
            raise UsageError(f"{where}: storage_from needs requires = [\"storage\", ...]")
    if not space.lo <= hazard.threshold <= space.hi:
        raise UsageError(f"{where}: threshold {hazard.threshold} is outside the range {space.lo}-{space.hi}")
    return SimModel(space, hazard, int(sim.get("seed", 0)), parse_duration(sim.get("overhead", 90), "overhead"),
                    float(sim.get("speed", 0.0)), float(sim.get("heartbeat", 0.05)), bool(sim.get("reuse", True)))


class SimBackend:
    """Runs a step of `parallel` simulated trials, each slot on its own server; exposure adds across them.

    A memoryless hazard draws every trial afresh (as it always did); an aging one keeps each slot's
    clean server, its age and its uptime, for the slot's next trial with the same launch settings
    (unless the step asks for fresh servers).
    """

    def __init__(self, model: SimModel, parallel: int = 1) -> None:
        self.m = model
        self.parallel = max(1, parallel)
        self.servers = SimServers(model.hazard, model.space, model.reuse)

    def run_step(self, step: int, cfg: Config, cap: float, hooks: Any, fresh: bool = False) -> Outcome:
        rng = random.Random(f"{self.m.seed}:{step}")
        lam = self.m.hazard.rate_of(self.m.space, cfg)
        n = self.parallel
        each = cap / n
        draws = [rng.expovariate(lam) if lam > 0 else math.inf for _ in range(n)]
        slots = [self.servers.trial(slot, cfg, each, rng, fresh, draws[slot], f"step{step}-slot{slot}")
                 for slot in range(n)]
        draws = [t for _, _, t in slots]
        first = min(draws)
        hung = first < each
        run = first if hung else each
        ids = [hooks.trial_start(slot, server=srv.ident, uptime_start=round(start, 3), cap=round(each, 3))
               for slot, (srv, start, _) in enumerate(slots)]
        if self.m.speed > 0:
            self._realtime(ids, run, hooks)
        ov = self.m.overhead
        runs = []
        for slot, tid in enumerate(ids):
            srv, start, _ = slots[slot]
            mine = hung and draws[slot] == first
            hooks.trial_end(tid, hung=mine, exposure=run, trial_time=ov + run, uptime=round(start + run, 3),
                            work={"load_s": round(start + run, 3)})
            runs.append(Run(start, start + run, mine, each))
            self.servers.finish(slot, srv, cfg, run, mine)
        return Outcome(hung, exposure=n * run, wall=ov + run, trial_time=n * (ov + run),
                       detail={"simulated": True, "rate_per_hour": lam * 3600}, runs=runs)

    def stop_all(self) -> None:
        """Nothing runs outside this process."""

    def close(self) -> None:
        """Nothing is kept between steps but the virtual servers."""

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


class DirectSim:
    """An executor for Search without a journal (calibration, tests): virtual-time trials on simulated servers.

    One stream of draws per seed. With `reuse`, a clean server serves the slot's next trial with the
    same launch settings, as the real backend does (an aging server keeps its age); `parallel` slots
    share a step's cap and the first hang ends the others.
    """

    def __init__(self, m: SimModel, stream: str, reuse: bool = True, parallel: int = 1,
                 overhead: float | None = None) -> None:
        self.m = m
        self.rng = random.Random(f"{stream}:{m.seed}")
        self.servers = SimServers(m.hazard, m.space, reuse)
        self.parallel = parallel
        self.overhead = m.overhead if overhead is None else overhead
        self.fresh_asked = 0  # steps that asked for fresh servers

    def run(self, cfg: Config, cap: float, fresh: bool = False) -> Outcome:
        self.fresh_asked += fresh
        ov = self.overhead
        if self.parallel == 1:
            srv, start, t = self.servers.trial(0, cfg, cap, self.rng, fresh)
            run = min(t, cap)
            self.servers.finish(0, srv, cfg, run, t < cap)
            return Outcome(t < cap, run, ov + run, ov + run, runs=[Run(start, start + run, t < cap, cap)])
        each = cap / self.parallel
        slots = [self.servers.trial(i, cfg, each, self.rng, fresh) for i in range(self.parallel)]
        first = min(t for _, _, t in slots)
        hung = first < each
        run = first if hung else each
        runs = []
        for i, (srv, start, t) in enumerate(slots):
            mine = hung and t == first
            self.servers.finish(i, srv, cfg, run, mine)
            runs.append(Run(start, start + run, mine, each))
        n = self.parallel
        return Outcome(hung, n * run, ov + run, n * (ov + run), runs=runs)

