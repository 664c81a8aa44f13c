"""The search: baseline, ddmin over changes, Bayesian bisection over concurrency, confirmation.

Phases (each prints its decisions with credible intervals as they happen):

1. **Baseline.** The top of the concurrency range with every change is run
   until it has hung ``baseline_hangs`` times (or a prior is given). This fixes
   the rate posterior Gamma(k, E) that sizes every clean trial afterwards.
1b. **Probe.** The smallest configuration (lowest concurrency, plain server) runs
   until a hang at the pooled rate would have shown with probability
   ``1 - probe_minimum`` under the posterior. A hang there is the
   answer (nothing is smaller); a clean probe decides nothing and the search
   goes on, its exposure kept as evidence.
2. **Changes (ddmin).** Delta debugging at the top concurrency towards the
   fewest changes from a plain server. A test "does X hang?" ends at the first
   hang (definitive), or as "does not hang" once its clean exposure T makes
   ``P(survive T | X hangs at >= ratio x the pooled rate) <= alpha_i``. The
   screening tests use a loose level (``ddmin_alpha``); the answer M is then
   re-checked: every M - {x} must stay clean at the strict level
   ``alpha_dd / |M|`` (only those re-checks can make the answer wrong).
   With a storage ladder (``storage=P1,...,PN``) and storage in M, the plainer
   paths are then tried plainest first; the first that hangs replaces PN.
3. **Concurrency.** A posterior over the threshold theta (the lowest
   concurrency that hangs, monotone above it), with the rate above theta
   integrated out: ``L(theta) = Gamma(a0+K) / (b0+E)^(a0+K)`` where K, E are the
   hangs and exposure at concurrencies >= theta, and 0 if anything below theta
   hung. Each test goes where P(theta <= c) is nearest ``split_quantile`` (the
   posterior median by default). Clean exposure at c counts against every
   theta <= c at once, so no step needs its own full-confidence verdict: a
   clean test halves P(theta <= c) (``step_target``) unless c is next to the
   lowest hang, where it is settled at ``alpha_c`` in one run. The search
   stops when one theta holds ``1 - alpha_c`` of the mass. A hang above a long clean run
   that the model cannot explain is reported as contradicting monotonicity.
4. **Confirmation.** The minimal configuration is run until it has hung
   ``confirm_hangs`` times; its rate estimate and interval come from that.

**The hazard model** (:mod:`repro.bisect.hazard`). Everything above counts clean
exposure as memoryless (``--hazard-model exponential``). Every trial is also kept as
a run of its server's continuous uptime; after the baseline and at every later hang
the times to hang are tested for memorylessness. Under the aging model (rejected, or
``--hazard-model aging``, or auto with trials on restarted servers while aging is not
excluded) each computation above runs under two Weibull shapes -- the least (at
least k = 1) and the most aging plausible ones -- with exposure replaced by the runs' cumulative hazard in
uptime (``rate_ratio`` becomes a server aging that much slower), and a verdict must
hold under both: the clean-test sizes are the larger, P(threshold <= c) the larger,
the answer's mass the smaller. k = 1 alone is exactly the memoryless search.

Trials are requested from a step runner (real stress runs, or draws from a known
hazard in virtual time). Errors in this search are one-sided: a hang is never
wrong, so a wrong answer is always "not minimal" (a change kept or a
concurrency too high).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import click

from repro.bisect.hazard import EXPONENTIAL, HazardModel, ModelTest, Run, aging_model, memorylessness, onset_of
from repro.bisect.space import Change, Config, SearchSpace
from repro.bisect.stats import RatePosterior, binomial_split_pvalue, fmt_interval, rate_upper_bound
from repro.errors import UsageError
from repro.options import Flag, check_ranges, setting
from repro.units import format_duration, parse_duration


@dataclass
class Outcome:
    """What one step (one or more parallel trials of one configuration) showed."""

    hung: bool
    exposure: float  # seconds of exposure after warm-up, summed over parallel trials
    wall: float  # wall seconds the step took
    trial_time: float  # machine seconds: every trial's start-up + run time, summed
    skipped: bool = False  # could not test (target failed)
    detail: dict[str, Any] = field(default_factory=dict)
    # Each trial as a run of its server's continuous uptime (None: one fresh server ran the whole exposure)
    runs: list[Run] | None = None


HAZARD_MODELS = ("auto", "exponential", "aging")  # --hazard-model


class StepRunner(Protocol):
    def run(self, config: Config, cap: float) -> Outcome: ...  # with fresh=True: no server of another config


@dataclass
class Settings:
    alpha: float = setting(0.05, flag=Flag(
        "--alpha", "Overall error level: the chance that the answer is not minimal.", type=float, positive=True,
        maximum=0.5))
    baseline_hangs: int = setting(3, flag=Flag(
        "--baseline-hangs", "Reproduce the baseline this many times before shrinking.", type=int, minimum=1))
    # (hangs, exposure seconds) instead of reproducing the baseline; --prior's text is read by parse_prior()
    prior: tuple[int, float] | None = setting(None, flag=Flag(
        "--prior", "Instead of reproducing the baseline: K hangs seen in DUR of baseline load (e.g. 3/15h), or each "
        "hang's server uptime (e.g. 6h,5h,14h: also tested for aging).", metavar="K/DUR|UP,..."))
    # ... or the baseline's servers' uptimes at each of its hangs (times to hang; prior = their count and sum)
    prior_uptimes: tuple[float, ...] | None = None
    rate_ratio: float = setting(0.5, flag=Flag(  # "still hangs": a rate at least this fraction of the baseline's
        "--rate-ratio", "A configuration 'still hangs' if it hangs at least this fraction as often as the baseline.",
        type=float, positive=True, maximum=1.0))
    # Concurrency tests go where P(threshold <= c) is nearest this (0.5: the posterior median). Above
    # 0.5 the search leans to where a hang (cheap: it ends the trial) is likely; calibration showed
    # 0.7-0.8 cheaper on a threshold shape and dearer when nothing is needed, so the median stays.
    split_quantile: float = 0.5
    # A clean test below the lowest hang (not next to it) runs until P(threshold <= c) is this fraction
    # of what it was: 0.5 halves it. A later clean test higher up counts against c too, so a full
    # verdict there is mostly wasted; calibration: 0.5 cut the threshold shape's trial-hours by 6-9%
    # against 0.25 at the same correctness, the other shapes within 2% (BENCHMARKS.md).
    step_target: float = 0.5
    lowest_prior: float = 0.3  # prior P(no concurrency dependence): the low end gets this, the rest share
    ddmin_alpha: float = 0.1  # level of ddmin's screening tests (the final re-checks use the strict budget)
    confirm_hangs: int = setting(1, flag=Flag(  # the minimal configuration must have hung this often
        "--confirm-hangs", "Hangs the final configuration must show (1: the hang that found it is enough; 3 narrows "
        "the rate interval in minimal.json at about 2 more mean times to hang).", type=int, minimum=1))
    # probe the smallest configuration first, missing a baseline-like hang this often (0: off); below 1 (validate)
    probe_minimum: float = setting(0.05, flag=Flag(
        "--probe-minimum", "After the baseline, run the smallest configuration (lowest concurrency, plain server) "
        "long enough that a hang like the baseline's would be missed with probability P: if it hangs, nothing "
        "smaller needs searching. 0: skip the probe.", type=float, metavar="P", minimum=0))
    max_trial: float | None = None  # cap on one step's clean exposure (None: posterior only)
    min_trial: float = setting(60.0, flag=Flag(  # never ask for less clean exposure than this in one step
        "--min-trial", "Shortest clean exposure asked of one step.", parse="duration", minimum=0))
    budget: float | None = None  # wall seconds for the whole search
    max_skips: int = 3  # consecutive "could not test" before giving up
    # exponential: memoryless (exposure adds across trials and restarts); aging: clean runs count by
    # continuous uptime; auto: exponential until the hangs' times to hang reject memorylessness
    hazard_model: str = setting("auto", flag=Flag(
        "--hazard-model", "exponential: hangs are memoryless, clean exposure adds across trials and restarts. aging: "
        "the server must age (clean runs count by continuous uptime; trials run past the onset on one server; no "
        "server reused across configurations). auto: exponential until the hangs' uptimes reject memorylessness "
        "(a test whose power at 3 hangs is low: it says so).", type=click.Choice(HAZARD_MODELS)))
    model_level: float = 0.05  # level of that test over the whole search (80% at the baseline, then 10%, 5%, ...)
    reuse_when_aging: bool = setting(False, flag=Flag(  # a clean server serves other configurations though it ages
        "--reuse-server", "Keep letting a clean server serve other configurations even when the hazard ages (its "
        "age then counts for the next configuration).", parse="flag"))
    # A verdict's exposure is cut into runs of restarted servers (--parallel, or --max-trial with
    # --fresh-server / Ray, where a capped run cannot go on on its server): adding those up is what only
    # the memoryless model allows. auto uses the aging model there unless the hangs exclude aging (the
    # shape's interval below AGING_EXCLUDED).
    split_runs: bool = False
    # Seconds a hang's uptime may lie after its stall (the detector's poll interval): widens the onset's
    # lower bound, which is otherwise that much too late on hangs that strike at the onset.
    uptime_resolution: float = 0.0

    def __post_init__(self) -> None:
        if self.prior_uptimes:
            self.prior_uptimes = tuple(float(u) for u in self.prior_uptimes)
            self.prior = (len(self.prior_uptimes), sum(self.prior_uptimes))

    def validate(self) -> None:
        """Every check of the search settings (the command makes none of its own): one UsageError naming the flag."""
        check_ranges(self)
        if self.probe_minimum >= 1:
            raise UsageError(f"--probe-minimum must be below 1, got {self.probe_minimum:g}")
        if self.hazard_model not in HAZARD_MODELS:
            raise UsageError(f"unknown --hazard-model {self.hazard_model!r}: use {', '.join(HAZARD_MODELS)}")
        if self.prior_uptimes is not None and (not self.prior_uptimes or min(self.prior_uptimes) <= 0):
            raise UsageError("--prior: give positive uptimes, e.g. 6h,5h,14h (one per hang, each on a server that "
                             "ran without restart until it hung)")
        if self.prior is not None and (self.prior[0] < 1 or self.prior[1] <= 0):
            raise UsageError(f"--prior needs at least one hang in a positive duration, got {self.prior[0]} in "
                             f"{format_duration(self.prior[1])}")
        for name, value in (("--max-trial", self.max_trial), ("--budget", self.budget)):
            if value is not None and value <= 0:
                raise UsageError(f"{name} must be positive")
        for name, share in (("split_quantile", self.split_quantile), ("step_target", self.step_target),
                            ("lowest_prior", self.lowest_prior), ("ddmin_alpha", self.ddmin_alpha),
                            ("model_level", self.model_level)):
            if not 0 < share < 1:
                raise UsageError(f"the search setting {name} must be between 0 and 1, got {share:g}")
        if self.max_skips < 0:
            raise UsageError(f"the search setting max_skips must not be negative, got {self.max_skips}")
        if self.uptime_resolution < 0:
            raise UsageError(f"the search setting uptime_resolution must not be negative, got {self.uptime_resolution:g}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "prior": list(self.prior) if self.prior else None,
                "prior_uptimes": list(self.prior_uptimes) if self.prior_uptimes else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Settings":
        d = dict(d)
        if d.get("prior"):
            d["prior"] = (int(d["prior"][0]), float(d["prior"][1]))
        if d.get("prior_uptimes"):
            d["prior_uptimes"] = tuple(float(u) for u in d["prior_uptimes"])
        return cls(**d)


def parse_prior(text: str | None) -> dict[str, Any]:
    """--prior: ``K/DUR`` (K hangs seen in DUR of load on the baseline, e.g. 3/15h) fills ``prior``; ``UP1,UP2,...``
    (the baseline servers' continuous uptimes at each hang seen) fills ``prior_uptimes``. Ranges: validate()."""
    if not text:
        return {}
    if "/" in text:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\S+)\s*", text)
        if not m:
            raise UsageError(f"--prior {text!r}: write HANGS/DURATION, e.g. 3/15h (3 hangs in 15 hours of load), "
                             "or the uptimes at each hang, e.g. 6h,5h,14h")
        return {"prior": (int(m.group(1)), parse_duration(m.group(2), "--prior duration"))}
    return {"prior_uptimes": tuple(parse_duration(p.strip(), "--prior uptime") for p in text.split(",") if p.strip())}


@dataclass
class Decision:
    phase: str
    text: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    status: str  # "minimal" | "no-baseline" | "budget" | "untestable"
    config: Config | None
    evidence: dict[str, dict[str, float]]
    posterior: RatePosterior | None
    baseline: RatePosterior | None
    decisions: list[Decision]
    trial_time: float
    wall: float
    steps: int
    threshold_mass: float | None = None
    warnings: list[str] = field(default_factory=list)
    hazard: dict[str, Any] | None = None  # the model the evidence was counted under, its test and onset
    hang_uptimes: dict[str, list[float]] = field(default_factory=dict)  # config key -> uptimes at its hangs

    @property
    def found(self) -> bool:
        return self.status == "minimal" and self.config is not None


class StopSearch(Exception):
    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


Report = Callable[[Decision], None]
AGING_EXCLUDED = 1.5  # a Weibull shape interval ending below this excludes aging that matters


def recheck_budget(alpha_dd: float, rnd: int) -> float:
    """Error budget of the r-th re-check round: 80% for the first, then 10%, 5%, ... (sums to alpha_dd)."""
    return alpha_dd * (0.8 if rnd == 1 else 0.1 * 0.5 ** (rnd - 2))


class Search:
    def __init__(self, space: SearchSpace, settings: Settings, runner: StepRunner,
                 report: Report | None = None) -> None:
        self.space = space
        self.s = settings
        self.ex = runner
        self.report = report or (lambda d: None)
        self.evidence: dict[Config, list[float]] = {}  # config -> [hangs, exposure]
        self.decisions: list[Decision] = []
        self.warnings: list[str] = []
        self.trial_time = 0.0
        self.wall = 0.0
        self.steps = 0
        self.skips = 0
        # The error budget alpha is split evenly over the parts of the search that can err
        # (a hang is never wrong: only a "does not hang" can make the answer not minimal);
        # what a phase leaves unspent (no re-check needed, no storage ladder to climb) moves
        # on to the next phase (a union bound along the path the search took).
        parts = {"dd": bool(space.changes), "storage": bool(space.storage_ladder), "c": len(space.values) > 1}
        share = settings.alpha / max(1, sum(parts.values()))
        self.alpha_dd, self.alpha_st, self.alpha_c = (share if parts[k] else 0.0 for k in ("dd", "storage", "c"))
        self.carry = 0.0  # error budget a finished phase did not spend: it goes to the next phase
        self._dd_cache: dict[frozenset[Change], bool] = {}
        self._warned: set[int] = set()
        self.threshold_mass: float | None = None
        # Every trial as a run of its server's continuous uptime: what the hazard model counts
        self.runs: dict[Config, list[Run]] = {}
        self.model: HazardModel = (aging_model(None, None, 3600.0, "--hazard-model aging")
                                   if settings.hazard_model == "aging" else EXPONENTIAL)
        self.model_test: ModelTest | None = None
        self._baseline_done = False
        self._notes: set[str] = set()
        self._tests = 0

    # -- bookkeeping -------------------------------------------------------
    def decide(self, phase: str, text: str, **data: Any) -> None:
        d = Decision(phase, text, data)
        self.decisions.append(d)
        self.report(d)

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        self.decide("warning", text)

    def hangs(self, cfg: Config) -> int:
        return int(self.evidence.get(cfg, [0, 0.0])[0])

    def exposure(self, cfg: Config) -> float:
        return float(self.evidence.get(cfg, [0, 0.0])[1])

    @property
    def fresh_servers(self) -> bool:
        """Trials may not continue a server another configuration aged (the hazard ages, reuse not asked for)."""
        return self.model.aging and not self.s.reuse_when_aging

    def run(self, cfg: Config, cap: float) -> Outcome:
        if self.s.max_trial:
            if not self.model.aging:
                cap = min(cap, self.s.max_trial)
            elif cap > self.s.max_trial and "max_trial" not in self._notes:
                # clean trials must run past the onset on one server: no cap may cut a verdict's run short
                self._notes.add("max_trial")
                self.warn(f"--max-trial {format_duration(self.s.max_trial)} no longer applies: under an aging hazard "
                          f"a clean verdict needs one continuous run on one server (this one up to "
                          f"{format_duration(cap)}); --budget still bounds the search")
        cap = max(cap, self.s.min_trial)
        if self.s.budget is not None:
            left = self.s.budget - self.wall
            if left < self.s.min_trial:
                raise StopSearch("budget", f"budget of {format_duration(self.s.budget)} used up")
            cap = min(cap, left)
        out = self.ex.run(cfg, cap, fresh=True) if self.fresh_servers else self.ex.run(cfg, cap)
        self.steps += 1
        self.wall += out.wall
        self.trial_time += out.trial_time
        if out.skipped:
            self.skips += 1
            self.decide("trial", f"could not test {cfg.describe()} ({out.detail.get('reason', 'target failed')})")
            if self.skips >= self.s.max_skips:
                raise StopSearch("untestable", f"{self.skips} trials in a row could not test: the target fails to start")
            return out
        self.skips = 0
        ev = self.evidence.setdefault(cfg, [0, 0.0])
        ev[0] += 1 if out.hung else 0
        ev[1] += out.exposure
        runs = out.runs if out.runs is not None else [Run(0.0, out.exposure, out.hung, cap)]
        # as the journal holds them (ms), so that a resumed search replays the same decisions
        self.runs.setdefault(cfg, []).extend(
            Run(round(r.start, 3), round(r.end, 3), r.hung, None if r.cap is None else round(r.cap, 3), self.steps)
            for r in runs)
        if out.hung and self._baseline_done:
            self.refit()
        return out

    # -- the hazard model ----------------------------------------------------
    def hang_uptimes(self, cfg: Config) -> list[float]:
        return [r.end for r in self.runs.get(cfg, []) if r.hung]

    def onset_sample(self) -> list[float]:
        """Uptimes at the hangs of the configuration with the most (the baseline's include the field's)."""
        base = self.space.baseline
        samples = {c: self.hang_uptimes(c) for c in self.runs}
        samples[base] = list(self.s.prior_uptimes or ()) + samples.get(base, [])
        return samples[max(samples, key=lambda c: (len(samples[c]), c == base))]

    def refit(self, announce: bool = False) -> None:
        """Test memorylessness on every hang so far; in auto mode, switch to aging once it is rejected."""
        strata = [runs for runs in self.runs.values() if any(r.hung for r in runs)]
        if self.s.prior_uptimes:  # the field's hangs (a --prior of K/DUR has no times to test)
            base = self.runs.get(self.space.baseline)
            field = self.prior_runs()
            strata = [s for s in strata if s is not base] + [field + (base or [])]
        # The test is repeated at every new hang: its level is spent like the re-checks' budget (80% on
        # the baseline's hangs, 10%, 5%, ... on later ones), so memorylessness is wrongly rejected at most
        # model_level of the time over the whole search.
        # Once rejected, the level stays where it was (nothing is left to protect).
        if self.model_test is not None and self.model_test.verdict == "aging":
            level = self.model_test.level
        else:
            self._tests += 1
            level = recheck_budget(self.s.model_level, self._tests)
        test = memorylessness(strata, level)
        onset = onset_of(self.onset_sample(), resolution=self.s.uptime_resolution)
        hung = [u for c in self.runs for u in self.hang_uptimes(c)] + list(self.s.prior_uptimes or ())
        scale = sum(hung) / len(hung) if hung else 3600.0
        before, mode = self.model, self.s.hazard_model
        rejected = test.verdict == "aging" or (before.aging and before.why.startswith("memorylessness rejected"))
        if mode == "aging":
            self.model = aging_model(test, onset, scale, "--hazard-model aging")
        elif mode == "auto" and rejected:
            self.model = aging_model(test, onset, scale, "memorylessness rejected"
                                     + ("" if test.verdict == "aging" else " earlier"))
        elif mode == "auto" and self.s.split_runs and test.k_high > AGING_EXCLUDED:
            self.model = aging_model(test, onset, scale,
                                     f"trials run on restarted servers and {test.hangs} hang(s) do not exclude aging "
                                     f"(shape up to {test.k_high:.2g}; memoryless once below {AGING_EXCLUDED:g})")
        else:
            self.model = HazardModel("exponential", (1.0,), test=test, onset=onset,
                                     why="--hazard-model exponential" if mode == "exponential"
                                     else "memorylessness not rejected")
        self.model_test = test
        if announce or self.model.name != before.name or (before.test is not None
                                                          and before.test.verdict != test.verdict):
            self.decide("model", self.model_text(), **self.model.to_dict())

    def model_text(self) -> str:
        m, t = self.model, self.model_test
        head = f"hazard model: {'aging' if m.aging else 'memoryless (exponential)'} ({m.why})"
        parts = [head, t.describe() if t else "no hangs to test yet"]
        if m.onset is not None and (m.aging or (t is not None and t.verdict == "aging")):
            parts.append(m.onset.describe())
        if m.aging:
            steep = ", ".join(f"k = {k:.3g}" for k in m.shapes)
            parts.append(f"clean runs count by continuous uptime under {steep} (a verdict must hold under each)"
                         + ("; no server is reused across configurations" if self.fresh_servers else
                            "; servers are reused across configurations (--reuse-server)"))
        return "; ".join(parts)

    def _tau(self, cfg: Config, k: float, stretch: float = 1.0, extra: float = 0.0) -> float:
        """Clean evidence at cfg under shape k: k = 1 in seconds of exposure x stretch, as always."""
        if k == 1.0:
            e = self.exposure(cfg) + extra
            return e if stretch == 1.0 else e * stretch
        return self.model.tau(k, self.runs.get(cfg, ()), stretch) + self.model.fresh_run(k, extra, stretch)

    def prior_runs(self) -> list[Run]:
        """A given prior as servers that hung: at the uptimes given, or (K hangs in E) K of E/K each."""
        if self.s.prior_uptimes:
            return [Run(0.0, u, True) for u in self.s.prior_uptimes]
        if not self.s.prior:
            return []
        kk, e = self.s.prior
        return [Run(0.0, e / kk, True) for _ in range(kk)]

    def _prior_runs(self, k: float, stretch: float = 1.0) -> float:
        """A given prior under shape k."""
        return self.model.tau(k, self.prior_runs(), stretch)

    def _fresh_length(self, k: float, tau: float, stretch: float) -> float:
        """Seconds of load on a fresh server that add `tau` under shape k (a continued server adds more)."""
        return tau / stretch if k == 1.0 else self.model.length_for(k, tau, stretch)

    def pooled(self, shape: float = 1.0) -> RatePosterior:
        """Rate posterior from every configuration known to hang (plus a given prior), under a hazard shape."""
        k, e = 0, 0.0
        if self.s.prior:
            k, e = self.s.prior
            if shape != 1.0:
                e = self._prior_runs(shape)
        for cfg, ev in self.evidence.items():
            if ev[0] > 0:
                k += int(ev[0])
                e += ev[1] if shape == 1.0 else self.model.tau(shape, self.runs.get(cfg, ()))
        return RatePosterior(k, e)

    # -- phases ------------------------------------------------------------
    def run_all(self) -> Result:
        status, text, final = "minimal", "", None
        try:
            self.baseline()
            if self.probe():
                final, mass = self.space.minimum, 1.0
            else:
                changes = self.minimize(list(self.space.changes)) if self.space.changes else []
                changes = self.storage_rung(changes)
                theta, mass = (self.concurrency(frozenset(changes)) if len(self.space.values) > 1
                               else (self.space.hi, 1.0))
                final = Config(theta, frozenset(changes))
            self.threshold_mass = mass
            self.confirm(final)
        except StopSearch as stop:
            status, text = stop.status, stop.text
            self.threshold_mass = None
            self.decide("stop", text)
        post = RatePosterior(self.hangs(final), self.exposure(final)) if final else None
        baseline_cfg = self.space.baseline
        bpost = RatePosterior(self.hangs(baseline_cfg), self.exposure(baseline_cfg))
        if final is not None and status == "minimal":
            needs = ""
            if self.model.aging and self.hang_uptimes(final):
                first = min(self.hang_uptimes(final))
                needs = f"; it needs the server to age: hung after {format_duration(first)} of continuous load"
            self.decide("result", f"minimal configuration: {final.describe()}; rate "
                        f"{fmt_interval(post) if post and post.proper else 'n/a'}{needs}")
        hazard = self.model.to_dict()
        if final is not None:
            own = onset_of(self.hang_uptimes(final), resolution=self.s.uptime_resolution)
            hazard["minimal_onset"] = own.to_dict() if own else None
        hazard["text"] = self.model_text()
        return Result(status, final if status == "minimal" else None,
                      {c.key(): {"hangs": v[0], "exposure": v[1]} for c, v in self.evidence.items()},
                      post, bpost if bpost.proper else None, self.decisions, self.trial_time, self.wall, self.steps,
                      self.threshold_mass, self.warnings, hazard,
                      {c.key(): self.hang_uptimes(c) for c in self.runs if self.hang_uptimes(c)})

    def baseline(self) -> RatePosterior:
        cfg = self.space.baseline
        if self.s.prior:
            k, e = self.s.prior
            post = RatePosterior(k, e)
            self.decide("baseline", f"baseline prior given: {k} hangs in {format_duration(e)} -> rate {fmt_interval(post)}")
            self._baseline_done = True
            self.refit(announce=True)
            return post
        while self.hangs(cfg) < self.s.baseline_hangs:
            k = self.hangs(cfg)
            cap = (self.s.budget - self.wall) if self.s.budget is not None else math.inf
            if k:
                # Expect a hang within a few mean times to hang; a longer clean run is itself news.
                cap = min(cap, 20.0 * self.exposure(cfg) / k)
            if self.s.max_trial:
                cap = min(cap, self.s.max_trial)
            if math.isinf(cap):
                cap = 24 * 3600.0
            out = self.run(cfg, cap)
            if out.skipped:
                continue
            post = RatePosterior(self.hangs(cfg), self.exposure(cfg))
            what = "hang" if out.hung else "no hang"
            self.decide("baseline", f"baseline {cfg.describe()}: {what} after {format_duration(out.exposure)}; "
                        f"{self.hangs(cfg)} hang(s) in {format_duration(self.exposure(cfg))}"
                        + (f" -> rate {fmt_interval(post)}" if post.proper else
                           f" -> rate below {rate_upper_bound(0, self.exposure(cfg)) * 3600:.3g}/h (95%)"),
                        hangs=self.hangs(cfg), exposure=self.exposure(cfg))
        post = RatePosterior(self.hangs(cfg), self.exposure(cfg))
        ups = ", ".join(format_duration(u) for u in self.hang_uptimes(cfg))
        self.decide("baseline", f"baseline reproduced {self.hangs(cfg)} times: mean time to hang "
                    f"{format_duration(post.mean_time_to_hang)}, rate {fmt_interval(post)}; server uptime at "
                    f"each hang {ups}")
        self._baseline_done = True
        self.refit(announce=True)
        return post

    # probe ------------------------------------------------------------------
    def probe(self) -> bool:
        """Run the smallest configuration (lowest concurrency, plain server) first, for a bounded time.

        A hang there ends the search: nothing is smaller. A clean probe decides nothing
        (it is not sized to say "does not hang"); its exposure stays in the evidence
        and counts again if the search comes back to that configuration.
        """
        cfg = self.space.minimum
        if not 0 < self.s.probe_minimum < 1 or cfg == self.space.baseline:
            return False
        # Long enough that a configuration hanging like the baseline shows it with probability
        # 1 - probe_minimum under the posterior (not the point estimate: 3 fast baseline hangs
        # would make a short probe miss too often), under every shape the model counts with.
        cap = max(self.pooled(1.0).clean_needed(self.s.probe_minimum, 1.0) if k == 1.0 else
                  self.model.length_for(k, self.pooled(k).clean_needed(self.s.probe_minimum, 1.0))
                  for k in self.model.shapes)
        self.decide("probe", f"probing the smallest configuration {cfg.describe()} for up to "
                    f"{format_duration(cap)} (P(no hang | it hangs like the baseline) = {self.s.probe_minimum:g})",
                    config=cfg.to_dict(), cap=cap)
        while True:
            out = self.run(cfg, cap)
            if not out.skipped:
                break
        if out.hung:
            self.decide("probe", f"the smallest configuration hangs: {cfg.describe()} hung after "
                        f"{format_duration(out.exposure)}; nothing smaller to search", config=cfg.to_dict(), hung=True)
            return True
        self.decide("probe", f"{cfg.describe()} clean for {format_duration(out.exposure)}: no verdict yet, "
                    f"searching", config=cfg.to_dict(), hung=False, exposure=out.exposure)
        return False

    # ddmin ------------------------------------------------------------------
    def test_changes(self, changes: frozenset[Change], alpha: float | None = None) -> bool:
        """Does (top concurrency, changes) hang? One-sided sequential test.

        Without `alpha` this is a screening test at ``ddmin_alpha`` (cached); with it,
        a re-check at that level which tops up the exposure already collected.
        """
        if alpha is None and changes in self._dd_cache:
            return self._dd_cache[changes]
        cfg = Config(self.space.hi, changes)
        if self.hangs(cfg):
            self._dd_cache[changes] = True
            return True
        level = self.s.ddmin_alpha if alpha is None else alpha
        kind = "screen" if alpha is None else "re-check"
        while True:
            gaps = [self._clean_gap(cfg, k, level) for k in self.model.shapes]
            if all(have >= need for _, have, need, _ in gaps):
                surv = max(post.survive(have, self.s.rate_ratio if k == 1.0 else 1.0) for k, have, _, post in gaps)
                post = gaps[0][3]
                how = (f" under k = {' and '.join(f'{k:.3g}' for k in self.model.shapes)}, by continuous uptime"
                       if self.model.aging else "")
                self.decide("changes", f"does NOT hang ({kind}): {cfg.describe()} -- clean for "
                            f"{format_duration(self.exposure(cfg))}{self._longest(cfg)}; P(that clean | hangs at >= "
                            f"{self.s.rate_ratio:g}x {fmt_interval(post)}) = {surv:.2g} <= {level:.2g}{how}",
                            config=cfg.to_dict(), hung=False, exposure=self.exposure(cfg), alpha=level)
                self._dd_cache[changes] = False
                return False
            # k = 1: the seconds still missing, as always; other shapes: a run long enough on its own
            out = self.run(cfg, max(need - have if k == 1.0 else self._fresh_length(k, need - have, self.s.rate_ratio)
                                    for k, have, need, _ in gaps if have < need))
            if out.hung:
                self.decide("changes", f"still hangs: {cfg.describe()} -- hang after "
                            f"{format_duration(self.exposure(cfg))} of exposure", config=cfg.to_dict(), hung=True,
                            exposure=self.exposure(cfg))
                self._dd_cache[changes] = True
                return True

    def _clean_gap(self, cfg: Config, k: float, level: float) -> tuple[float, float, float, RatePosterior]:
        """(shape, evidence so far, evidence needed, posterior) for "cfg does not hang" at `level` under shape k.

        k = 1 counts seconds (the pooled posterior's clean_needed at rate_ratio, as always); another
        shape counts cfg's runs by continuous uptime, stretched by rate_ratio.
        """
        post = self.pooled(k)
        if k == 1.0:
            return k, self.exposure(cfg), post.clean_needed(level, self.s.rate_ratio), post
        # (a run sized to close the gap closes it up to rounding: a relative 1e-9 is not worth another trial)
        return k, self._tau(cfg, k, self.s.rate_ratio) * (1.0 + 1e-9), post.clean_needed(level, 1.0), post

    def _longest(self, cfg: Config) -> str:
        runs = self.runs.get(cfg, [])
        if not self.model.aging or not runs:
            return ""
        return f" (longest continuous run {format_duration(max(r.end for r in runs))} of server uptime)"

    def minimize(self, changes: list[Change]) -> list[Change]:
        """ddmin with screening tests, then a re-check of every single removal at the strict level.

        Only the final re-checks decide whether the answer is right: an answer M is
        wrong only if some M - {x} hangs and its re-check says it does not. So the
        change budget alpha_dd is split over those re-checks (Bonferroni), and the
        screening tests may be loose: a screening error costs time, not correctness.
        """
        c = self.ddmin(changes)
        rnd = 0
        while c:
            rnd += 1
            budget = recheck_budget(self.alpha_dd, rnd)
            level = budget / len(c)
            self.decide("changes", f"re-checking {len(c)} single removal(s) from {', '.join(map(str, c))} at "
                        f"alpha {level:.2g} each")
            for x in list(c):
                rest = frozenset(y for y in c if y != x)
                if self.test_changes(rest, alpha=level):
                    self.decide("changes", f"re-check found that {x} is not needed: shrinking again")
                    c = self.ddmin(sorted(rest))
                    break
            else:
                break
        # Only the re-check rounds that ran could have erred; the rest of the budget moves on.
        self.carry += max(0.0, self.alpha_dd - sum(recheck_budget(self.alpha_dd, r) for r in range(1, rnd + 1)))
        self.decide("changes", f"fewest changes that still hang: {', '.join(map(str, c)) or 'none'}",
                    changes=[str(x) for x in c])
        return c

    def ddmin(self, changes: list[Change]) -> list[Change]:
        """Delta debugging (Zeller's ddmin) towards the fewest changes that still hang (screening tests)."""
        if self.test_changes(frozenset()):
            self.decide("changes", "a plain server hangs: no change is needed")
            return []
        c = sorted(changes)
        n = 2
        while len(c) >= 2:
            size = len(c) / n
            chunks = [c[int(round(i * size)):int(round((i + 1) * size))] for i in range(n)]
            chunks = [ch for ch in chunks if ch]
            reduced = False
            for ch in chunks:
                if self.test_changes(frozenset(ch)):
                    c, n, reduced = ch, 2, True
                    break
            if not reduced:
                for ch in chunks:
                    comp = [x for x in c if x not in ch]
                    if len(chunks) > 2 and comp and self.test_changes(frozenset(comp)):
                        c, n, reduced = comp, max(n - 1, 2), True
                        break
            if not reduced:
                if n >= len(c):
                    break
                n = min(2 * n, len(c))
        return c

    # storage ladder -----------------------------------------------------------
    def storage_rung(self, changes: list[Change]) -> list[Change]:
        """With the storage change needed, take the plainest path of the ladder that still hangs.

        Paths are tried plainest first, each at alpha_st / (number of rungs below the
        baseline's) with everything else in `changes` kept; the first hang decides.
        """
        field = self.space.storage_change
        if not self.space.storage_ladder or field is None or field not in changes:
            self.carry += self.alpha_st  # not needed: the ladder's share of the error budget moves on
            return changes
        rest = [c for c in changes if c != field]
        budget, self.carry = self.alpha_st + self.carry, 0.0
        level = budget / len(self.space.storage_ladder)
        self.decide("storage", f"storage matters; trying the plainer paths {', '.join(self.space.storage_ladder)} "
                    f"before {field.value} (alpha {level:.2g} each)")
        for i, path in enumerate(self.space.storage_ladder):
            alt = Change("storage", path)
            if self.test_changes(frozenset([*rest, alt]), alpha=level):
                self.carry = budget - i * level  # only the i clean verdicts could have erred
                self.decide("storage", f"the plainest storage that still hangs: {path}", storage=path)
                return sorted([*rest, alt])
        self.decide("storage", f"only {field.value} hangs among the storage paths", storage=field.value)
        return changes

    # concurrency ------------------------------------------------------------
    def _prior_for_family(self, changes: frozenset[Change], shape: float = 1.0) -> RatePosterior:
        """Pooled evidence from hanging configurations outside this family, scaled by rate_ratio."""
        k, e = (self.s.prior if self.s.prior else (0, 0.0))
        if shape != 1.0:  # the other families' servers aged 1/rate_ratio x as fast as this family may
            stretch = 1.0 / self.s.rate_ratio
            e = self._prior_runs(shape, stretch)
            for cfg, ev in self.evidence.items():
                if cfg.changes != changes and ev[0] > 0:
                    k += int(ev[0])
                    e += self.model.tau(shape, self.runs.get(cfg, ()), stretch)
            return RatePosterior(k, e)
        for cfg, ev in self.evidence.items():
            if cfg.changes != changes and ev[0] > 0:
                k += int(ev[0])
                e += ev[1]
        return RatePosterior(k, e / self.s.rate_ratio if self.s.rate_ratio > 0 else e)

    def threshold_posterior(self, changes: frozenset[Change], extra: tuple[int, float] | None = None,
                            shape: float = 1.0) -> list[float]:
        vals = self.space.values
        prior = self._prior_for_family(changes, shape)
        hangs = [self.hangs(Config(v, changes)) for v in vals]
        # Below the top, a hanging concurrency may hang only rate_ratio x as often: clean exposure
        # there is worth that much evidence (conservative near the threshold, where rates are lowest).
        # Under a shape k != 1 that is a server aging rate_ratio x as fast; `extra` is a fresh run.
        expo = [self._tau(Config(v, changes), shape, 1.0 if v == self.space.hi else self.s.rate_ratio,
                          extra[1] if extra is not None and extra[0] == v else 0.0) for v in vals]
        logw = []
        n = len(vals)
        p_lo = self.s.lowest_prior if n > 1 else 1.0
        for i in range(n):
            if any(hangs[:i]):
                logw.append(-math.inf)
                continue
            pr = p_lo if i == 0 else (1.0 - p_lo) / (n - 1)
            lp = math.log(pr) if pr > 0 else -math.inf
            k = prior.shape + sum(hangs[i:])
            e = prior.rate + sum(expo[i:])
            if k <= 0:
                logw.append(lp)  # no information on the rate yet
            else:
                logw.append(lp + (math.lgamma(k) - k * math.log(e) if e > 0 else math.inf))
        m = max(logw)
        w = [math.exp(x - m) if x > -math.inf else 0.0 for x in logw]
        z = sum(w)
        return [x / z for x in w]

    def _family_posterior(self, changes: frozenset[Change], lowest: int) -> RatePosterior:
        """Rate at concurrencies >= lowest with these changes (scale-free prior)."""
        vals = [v for v in self.space.values if v >= lowest]
        return RatePosterior(sum(self.hangs(Config(v, changes)) for v in vals),
                             sum(self.exposure(Config(v, changes)) for v in vals))

    def _check_monotone(self, changes: frozenset[Change], lowest_hang: int) -> None:
        vals = self.space.values
        fam_k = sum(self.hangs(Config(v, changes)) for v in vals if v >= lowest_hang)
        posts = {k: self._prior_for_family(changes, k).update(
            fam_k, sum(self._tau(Config(v, changes), k) for v in vals if v >= lowest_hang)) for k in self.model.shapes}
        for i, v in enumerate(vals):
            cfg = Config(v, changes)
            if v > lowest_hang and not self.hangs(cfg) and i not in self._warned:
                # judge it by the rest (under every shape the model counts with: the least surprising)
                p = max(RatePosterior(post.shape, post.rate - self._tau(cfg, k)).survive(self._tau(cfg, k))
                        for k, post in posts.items())
                if p < max(self.alpha_c, 1e-3) / 10:
                    self._warned.add(i)
                    self.warn(f"observation contradicts monotonicity: concurrency {v} stayed clean for "
                              f"{format_duration(self.exposure(cfg))} (P = {p:.2g} if it hung like the rest) "
                              f"although concurrency {lowest_hang} hung")

    def concurrency(self, changes: frozenset[Change]) -> tuple[int, float]:
        if self.carry:
            self.decide("concurrency", f"error budget for the threshold: {self.alpha_c:.3g} + {self.carry:.3g} "
                        f"left unspent by the earlier phases")
            self.alpha_c, self.carry = self.alpha_c + self.carry, 0.0
        vals = self.space.values
        while True:
            posts = [self.threshold_posterior(changes, shape=k) for k in self.model.shapes]
            hung_at = [v for v in vals if self.hangs(Config(v, changes))]
            h = min(hung_at) if hung_at else self.space.hi
            self._check_monotone(changes, h)
            # Under several shapes the least favourable one decides: the answer's mass is the smallest
            # any shape gives it, and P(threshold <= c) the largest.
            post = [min(p[i] for p in posts) for i in range(len(vals))]
            best = max(range(len(vals)), key=lambda i: (post[i], -i))
            if post[best] >= 1.0 - self.alpha_c and vals[best] == h:
                self.decide("concurrency", f"threshold: hangs from concurrency {vals[best]} "
                            f"(posterior {post[best]:.3f} >= {1 - self.alpha_c:.3f})",
                            threshold=vals[best], mass=post[best])
                return vals[best], post[best]
            cdf = self._cdf(posts)
            below = [i for i, v in enumerate(vals) if v < h]
            if not below:  # h is the lowest value: nothing left to test
                return h, post[vals.index(h)]
            i = min(below, key=lambda j: (abs(cdf[j] - self.s.split_quantile), -j))
            c = vals[i]
            if c == vals[below[-1]]:
                target = self.alpha_c * 0.999  # next to the lowest hang: settle it in one run
            else:
                target = max(cdf[i] * self.s.step_target, self.alpha_c * 0.999)
            cap = self._exposure_to(changes, c, i, target)
            cfg = Config(c, changes)
            self.decide("concurrency", f"testing concurrency {c}: P(hangs) = {cdf[i]:.3f}; "
                        f"up to {format_duration(cap)} clean to bring it to {target:.3g}",
                        concurrency=c, p_hangs=cdf[i], cap=cap)
            out = self.run(cfg, cap)
            if out.skipped:
                continue
            if out.hung:
                fam = self._family_posterior(changes, c)
                self.decide("concurrency", f"hang at concurrency {c} after {format_duration(out.exposure)}: "
                            f"the threshold is at most {c}; rate from {c} up {fmt_interval(fam)}",
                            concurrency=c, hung=True)
            else:
                newcdf = self._cdf([self.threshold_posterior(changes, shape=k) for k in self.model.shapes])[i]
                self.decide("concurrency", f"concurrency {c} clean for {format_duration(out.exposure)} "
                            f"(total {format_duration(self.exposure(cfg))}): P(hangs) now {newcdf:.3g}; its rate "
                            f"< {rate_upper_bound(0, self.exposure(cfg)) * 3600:.3g}/h (95%)",
                            concurrency=c, hung=False, p_hangs=newcdf)

    @staticmethod
    def _cdf(posts: list[list[float]]) -> list[float]:
        """P(threshold <= each value): the largest over the shapes' posteriors."""
        out = []
        for post in posts:
            cdf, acc = [], 0.0
            for p in post:
                acc += p
                cdf.append(acc)
            out = cdf if not out else [max(a, b) for a, b in zip(out, cdf)]
        return out

    def _exposure_to(self, changes: frozenset[Change], c: int, i: int, target: float) -> float:
        """Clean exposure at c that brings P(theta <= c) down to target (bisection on a monotone function).

        Under shapes other than k = 1 the exposure is one fresh run of that length.
        """

        def p(t: float) -> float:
            return max(sum(self.threshold_posterior(changes, (c, t), k)[: i + 1]) for k in self.model.shapes)

        lo, hi = 0.0, max(self.s.min_trial, 60.0)
        for _ in range(60):
            if p(hi) <= target:
                break
            lo, hi = hi, hi * 2
        else:
            return hi
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            if p(mid) <= target:
                hi = mid
            else:
                lo = mid
            if hi - lo < 1.0:
                break
        return hi

    # confirmation -------------------------------------------------------------
    def confirm(self, cfg: Config) -> None:
        while self.hangs(cfg) < self.s.confirm_hangs:
            k = self.hangs(cfg)
            post = self.pooled()
            # A config that hung before hangs again within ~20 of its own mean times to hang.
            cap = 20.0 * (self.exposure(cfg) / k if k else post.mean_time_to_hang / self.s.rate_ratio)
            out = self.run(cfg, cap)
            if out.skipped:
                continue
            own = RatePosterior(self.hangs(cfg), self.exposure(cfg))
            self.decide("confirm", f"{cfg.describe()}: {'hang' if out.hung else 'clean'} after "
                        f"{format_duration(out.exposure)}; {self.hangs(cfg)} of {self.s.confirm_hangs} hangs, rate "
                        + (fmt_interval(own) if own.proper else
                           f"below {rate_upper_bound(0, self.exposure(cfg)) * 3600:.3g}/h (95%)"))
        post = RatePosterior(self.hangs(cfg), self.exposure(cfg))
        base = self.space.baseline
        versus = ""
        if base != cfg and self.hangs(base) and not self.s.prior:
            k, kb = self.hangs(cfg), self.hangs(base)
            p = binomial_split_pvalue(k, k + kb, self.exposure(cfg), self.exposure(base))
            versus = (f"; against the baseline ({kb} hangs in {format_duration(self.exposure(base))}) "
                      f"P(this few hangs | equal rates) = {p:.2g}")
        self.decide("confirm", f"confirmed: {cfg.describe()} hung {self.hangs(cfg)} times in "
                    f"{format_duration(self.exposure(cfg))}; rate {fmt_interval(post)}; mean time to hang "
                    f"{format_duration(post.mean_time_to_hang)}{versus}")
