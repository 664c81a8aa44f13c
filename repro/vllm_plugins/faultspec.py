"""The fault-injection spec grammar, shared by the CLI (validation) and the plugin.

    SPEC  := FAULT (";" FAULT)*
    FAULT := KIND ["=" VALUE] ("," KEY "=" VALUE)*

Kinds (times in seconds, or with a unit: 30s, 5m, 1h):

    stall-after=T          block the scheduler for good, T seconds after the engine first
                           had a request to schedule (inside EngineCore.step, frame
                           `repro_injected_scheduler_stall`)
    stall-after=Nsteps     the same after N scheduler steps with work
    stall-for=T[,after=A]  block the scheduler for T seconds (a slow engine, not a dead one),
                           A seconds (default 0) after the engine first had work
    write-stall[=A]        block inside the hidden-state file write for good, A seconds
                           (default 0) after the first write (frame `repro_injected_write_stall`;
                           what hung shared storage does to vLLM 0.20.2)
    gpu-hang[=T|=Nsteps]   a GPU kernel that never finishes, enqueued on the engine's current
                           CUDA stream from inside EngineCore, T seconds (default 0) or N
                           steps after the engine first had work: vLLM's own next CUDA wait
                           (e.g. the async output copy's event synchronize) never returns while
                           the API server keeps answering. Needs a CUDA device; it cannot be
                           released (the kernel runs until the process dies): stop the server.
    raise-after=T          raise an exception inside the scheduler (EngineCore.step), T seconds
                           after the engine first had work: EngineCore dies the way it dies of a
                           real error (`EngineCore encountered a fatal error` + the traceback,
                           `ReproInjectedEngineError` from frame `repro_injected_engine_error`)
    raise-after=Nsteps     the same after N scheduler steps with work
    hazard=R,min_running=N[,seed=S][,onset=STEPS|onset=Ts]
                           a permanent scheduler stall that strikes at random, at R per hour
                           of engine time while at least N requests are running (and never
                           otherwise): a real engine with a known ground truth for bisect.
                           With onset: never before the engine has run STEPS scheduler steps
                           with work, then at R per hour -- an engine that ages (its rate grows
                           with its step count), logged as `repro fault: onset` when reached.
                           onset=Ts (a time: 20s, 2m, 1h): never before T seconds of engine
                           time after the engine first had work -- an engine that ages by the
                           clock, whose onset does not move with the step rate
    release                (control file only) unblock every stall and disarm

Stalls poll a release flag every 0.2 s: writing ``release`` to the control file
(``REPRO_INJECT_CONTROL``) ends them, so tests can share one server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

KINDS = ("stall-after", "stall-for", "write-stall", "gpu-hang", "raise-after", "hazard", "release")


class FaultSpecError(ValueError):
    """A spec that does not parse; the message names the bad part."""


@dataclass(frozen=True)
class Fault:
    kind: str
    seconds: float | None = None  # stall-after / raise-after / gpu-hang (time form), stall-for duration, write-stall delay
    steps: int | None = None  # stall-after=Nsteps, raise-after=Nsteps, gpu-hang=Nsteps
    after: float = 0.0  # stall-for start
    rate_per_hour: float | None = None  # hazard
    min_running: int = 1  # hazard
    seed: int | None = None  # hazard
    onset_steps: int = 0  # hazard: no stall before this many scheduler steps with work
    onset_s: float = 0.0  # hazard: no stall before this many seconds after the engine first had work


@dataclass(frozen=True)
class FaultSpec:
    faults: tuple[Fault, ...] = field(default_factory=tuple)
    text: str = ""

    def of_kind(self, kind: str) -> list[Fault]:
        return [f for f in self.faults if f.kind == kind]

    @property
    def release(self) -> bool:
        return any(f.kind == "release" for f in self.faults)


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_TIME = re.compile(r"^(\d+(?:\.\d+)?)(s|m|min|h)?$")


def _seconds(value: str, what: str) -> float:
    m = _TIME.match(value.strip().lower())
    if not m:
        raise FaultSpecError(f"{what}: {value!r} is not a time (use e.g. 30, 30s, 5m, 1h)")
    return float(m.group(1)) * _UNITS[m.group(2) or ""]


def _int(value: str, what: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise FaultSpecError(f"{what}: {value!r} is not a whole number") from None
    if n < 0:
        raise FaultSpecError(f"{what}: must not be negative")
    return n


def _onset(value: str) -> tuple[int, float]:
    """A hazard's onset: (steps, seconds). A bare number or Nsteps counts scheduler steps; a time with a
    unit (20s, 2m, 1h) counts engine seconds."""
    v = value.strip().lower()
    if re.fullmatch(r"-?\d+(steps)?", v):
        return _int(v.removesuffix("steps"), "hazard onset"), 0.0
    if _TIME.match(v):
        return 0, _seconds(v, "hazard onset")
    raise FaultSpecError(f"hazard onset: {value!r} is neither a step count (500, 500steps) nor a time (20s, 2m)")


def parse(text: str) -> FaultSpec:
    """Parse a spec; raise FaultSpecError with a message that names the bad part."""
    faults: list[Fault] = []
    for raw in (p.strip() for p in text.split(";")):
        if not raw:
            continue
        head, *opts = [p.strip() for p in raw.split(",")]
        kind, _, value = head.partition("=")
        kind = kind.strip().lower()
        if kind not in KINDS:
            raise FaultSpecError(f"unknown fault {kind!r} in {raw!r}: use one of {', '.join(KINDS)}")
        kw: dict[str, str] = {}
        for opt in opts:
            k, eq, v = opt.partition("=")
            if not eq:
                raise FaultSpecError(f"{raw!r}: option {opt!r} must be KEY=VALUE")
            kw[k.strip().lower()] = v.strip()
        allowed = {"stall-after": set(), "raise-after": set(), "stall-for": {"after"}, "write-stall": set(),
                   "gpu-hang": set(),
                   "hazard": {"min_running", "seed", "onset"}, "release": set()}[kind]
        unknown = set(kw) - allowed
        if unknown:
            raise FaultSpecError(f"{raw!r}: unknown option(s) {', '.join(sorted(unknown))}")
        if kind in ("stall-after", "raise-after"):
            if not value:
                raise FaultSpecError(f"{kind} needs a value: {kind}=30 or {kind}=200steps")
            if value.lower().endswith("steps"):
                faults.append(Fault(kind, steps=_int(value[:-5], kind)))
            else:
                faults.append(Fault(kind, seconds=_seconds(value, kind)))
        elif kind == "stall-for":
            if not value:
                raise FaultSpecError("stall-for needs a duration: stall-for=10")
            faults.append(Fault(kind, seconds=_seconds(value, "stall-for"),
                                after=_seconds(kw.get("after", "0"), "stall-for after")))
        elif kind == "write-stall":
            faults.append(Fault(kind, seconds=_seconds(value, "write-stall") if value else 0.0))
        elif kind == "gpu-hang":
            if value.lower().endswith("steps"):
                faults.append(Fault(kind, steps=_int(value[:-5], "gpu-hang")))
            else:
                faults.append(Fault(kind, seconds=_seconds(value, "gpu-hang") if value else 0.0))
        elif kind == "hazard":
            if not value:
                raise FaultSpecError("hazard needs a rate per hour: hazard=60,min_running=8")
            try:
                rate = float(value)
            except ValueError:
                raise FaultSpecError(f"hazard: {value!r} is not a rate per hour") from None
            if rate < 0:
                raise FaultSpecError("hazard: the rate must not be negative")
            onset_steps, onset_s = _onset(kw.get("onset", "0"))
            faults.append(Fault(kind, rate_per_hour=rate,
                                min_running=_int(kw.get("min_running", "1"), "hazard min_running"),
                                seed=_int(kw["seed"], "hazard seed") if "seed" in kw else None,
                                onset_steps=onset_steps, onset_s=onset_s))
        else:
            if value:
                raise FaultSpecError("release takes no value")
            faults.append(Fault(kind))
    if not faults:
        raise FaultSpecError("empty fault spec")
    return FaultSpec(tuple(faults), text.strip())
