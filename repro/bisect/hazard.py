"""Memoryless or aging? A test from the hangs seen, and the hazard models clean exposure is counted under.

Every trial is a *run* of one server: from its continuous uptime ``start`` (seconds of load; 0 on a
fresh server, more on a server that served earlier clean trials) to ``end`` (the stall, or the end
of a clean trial). A run is a time-to-hang observation: exact when it hung, right-censored when it
ended clean, and left-truncated at ``start``.

**The test.** A Weibull model with a shape ``k`` shared by every configuration and a scale of each
configuration's own: cumulative hazard ``(u / lam_c) ** k`` in uptime ``u``. ``k = 1`` is the
memoryless (Poisson) model of :mod:`repro.bisect.stats`; ``k > 1`` is aging (a server is more likely
to hang the longer it has run), ``k < 1`` front-loaded. The scales have a closed-form maximum for a
given ``k``, so the fit is a one-dimensional profile likelihood (configurations without a hang carry
no information on ``k`` and drop out). The statistic is the signed root of the likelihood ratio of
the Weibull fit against ``k = 1``. Its null distribution is *simulated* under the fitted memoryless
model with the same design (the same trials, caps, and the first hang of a step ending its siblings)
-- the large-sample chi-square is far off at a few hangs (at 3 hangs its nominal 5% test rejects a
memoryless hang 22% of the time) -- and the simulation also gives the critical value of the 95%
profile interval for ``k``. Seeded from the data, so a resumed search computes the same numbers.

Power (complete samples, level 0.05, memoryless against a Weibull k = 3 hazard; measured in
tests/unit/test_bisect_hazard.py): about 34% at 3 hangs, 77% at 5, 99% at 10. A memoryless verdict
from 3 hangs therefore says little; the search says so in its output.

Why a hand-written fit rather than scipy.stats.weibull_min.fit: the fit needs a shape shared across
configurations with a scale each, right-censoring and left-truncation (runs on reused servers), and
a test calibrated for 3-10 observations. scipy fits one sample (censoring only through
CensoredData, no truncation, no shared shape) and would add a large dependency for a 1-D search.

**The onset.** Under a shifted exponential (no hang before ``T0`` of continuous uptime, then a
constant rate), the earliest hang ``t1`` of ``n`` bounds ``T0`` from above, ``t1 - S / (n (n - 1))``
estimates it without bias (``S`` = the sum of the other hangs' excess over ``t1``), and
``n (n - 1) (t1 - T0) / S ~ F(2, 2n - 2)`` gives an exact lower confidence bound.

**The models the search uses.** ``exponential``: clean exposure adds across trials and restarts
(``k = 1``). ``aging``: each clean run counts by its cumulative hazard in *continuous uptime*, under
two shapes at once, and a verdict must hold under both: the least aging shape the hangs leave
plausible (the interval's lower end, or ``k = 1`` where the interval reaches below it: a long run on
one server is judged as the memoryless model judges it; for hazards that age, a run longer than the
mean time to hang is at least as informative as that model says) and the most aging one (the upper
end: a run shorter than the onset is then worth almost nothing, so short trials on fresh servers
never add up to "does not hang").
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

K_MIN = 0.1
K_MAX = 50.0  # a shape this steep is a sharp onset; the interval is cut here
NULL_SIMS = 400  # simulated memoryless data sets behind each p-value
_TINY = 1e-9


@dataclass(frozen=True)
class Run:
    """One trial on one server: continuous uptime at its start and at its end (seconds of load)."""

    start: float
    end: float
    hung: bool
    cap: float | None = None  # the longest it could have run (None: until a hang when it hung, else its length)
    group: int | None = None  # trials of one step share it (the first hang ended the others); None: alone

    @property
    def length(self) -> float:
        return max(0.0, self.end - self.start)


# -- the Weibull fit ----------------------------------------------------------------------------------
def _norm(strata: Sequence[Sequence[Run]]) -> tuple[list[tuple[int, float, list[tuple[float, float]]]], float]:
    """Strata with a hang as (hangs, sum of log hang uptimes, [(start, end)]), uptimes in units of their scale."""
    hung = [max(r.end, _TINY) for runs in strata for r in runs if r.hung]
    if not hung:
        return [], 1.0
    scale = math.exp(sum(math.log(u) for u in hung) / len(hung))
    out = []
    for runs in strata:
        d = sum(1 for r in runs if r.hung)
        if d == 0:
            continue
        logs = sum(math.log(max(r.end, _TINY) / scale) for r in runs if r.hung)
        out.append((d, logs, [(r.start / scale, max(r.end, _TINY) / scale) for r in runs]))
    return out, scale


def _loglik(strata: list[tuple[int, float, list[tuple[float, float]]]], k: float) -> float:
    """Profile log-likelihood of the shape k (each stratum's scale at its maximum)."""
    total = 0.0
    for d, logs, spans in strata:
        a = sum(e ** k - (s ** k if s > 0 else 0.0) for s, e in spans)
        total += d * math.log(k) + (k - 1.0) * logs - d * math.log(max(a, 1e-300) / d) - d
    return total


def _bound(strata: list[tuple[int, float, list[tuple[float, float]]]], k_hat: float, top: float, crit: float,
           upper: bool) -> float:
    """Where the profile likelihood ratio reaches `crit`, on one side of k_hat (the range end if it never does)."""
    end = K_MAX if upper else K_MIN
    if 2.0 * (top - _loglik(strata, end)) <= crit:
        return end
    a, b = math.log(k_hat), math.log(end)
    for _ in range(60):
        m = 0.5 * (a + b)
        if 2.0 * (top - _loglik(strata, math.exp(m))) <= crit:
            a = m
        else:
            b = m
        if abs(b - a) < 1e-4:
            break
    return math.exp(0.5 * (a + b))


# -- the null simulation (numpy: every simulated data set at once) --------------------------------------
def _seed(strata: Sequence[Sequence[Run]]) -> int:
    text = repr([[(round(r.start, 3), round(r.end, 3), r.hung, r.cap, r.group) for r in runs] for runs in strata])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _batch_fit(start: np.ndarray, end: np.ndarray, hung: np.ndarray,
               onehot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shape estimates and signed roots of the likelihood ratio against k = 1 for B data sets of the
    same runs (arrays B x n, onehot n x S: the configuration of each run). Newton steps on the
    concave profile log-likelihood, kept inside a shrinking bracket."""
    end = np.maximum(end, _TINY)
    nh = hung.sum(axis=1)
    ok = nh >= 2
    logend = np.log(end)
    scale = np.exp(np.where(hung, logend, 0.0).sum(axis=1) / np.maximum(nh, 1))[:, None]
    e = end / scale
    s0 = start / scale
    le = np.log(e)
    ls = np.log(np.where(s0 > 0, s0, 1.0))
    d = hung.astype(float) @ onehot  # B x S hangs per stratum
    logs = (np.where(hung, le, 0.0)) @ onehot
    live = d > 0

    def parts(k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        kk = k[:, None]
        ek = np.exp(kk * le)
        sk = np.where(s0 > 0, np.exp(kk * ls), 0.0)
        a = np.maximum((ek - sk) @ onehot, 1e-300)
        a1 = (ek * le - sk * ls) @ onehot
        a2 = (ek * le * le - sk * ls * ls) @ onehot
        return a, a1, a2

    def loglik(k: np.ndarray) -> np.ndarray:
        a, _, _ = parts(k)
        kk = k[:, None]
        term = d * np.log(kk) + (kk - 1.0) * logs - d * np.log(a / np.maximum(d, 1)) - d
        return np.where(live, term, 0.0).sum(axis=1)

    def score(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, a1, a2 = parts(k)
        kk = k[:, None]
        g = np.where(live, d / kk + logs - d * a1 / a, 0.0).sum(axis=1)
        h = np.where(live, -d / (kk * kk) - d * (a2 * a - a1 * a1) / (a * a), 0.0).sum(axis=1)
        return g, h

    n = start.shape[0]
    lo, hi = np.full(n, K_MIN), np.full(n, K_MAX)
    k = np.ones(n)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(40):
            g, h = score(k)
            lo = np.where(g > 0, k, lo)
            hi = np.where(g > 0, hi, k)
            step = k - g / np.where(h < 0, h, -1.0)
            k = np.where((h < 0) & (step > lo) & (step < hi), step, np.sqrt(lo * hi))
        g_hi = score(np.full(n, K_MAX))[0]
        g_lo = score(np.full(n, K_MIN))[0]
        k = np.where(g_hi >= 0, K_MAX, np.where(g_lo <= 0, K_MIN, k))
        lr = np.maximum(0.0, 2.0 * (loglik(k) - loglik(np.ones(n))))
    z = np.copysign(np.sqrt(lr), k - 1.0)
    return k, np.where(ok & np.isfinite(z), z, 0.0)


def _null_z(strata: Sequence[Sequence[Run]], sims: int, rng: np.random.Generator) -> np.ndarray:
    """The statistic for `sims` data sets of the same trials drawn from the fitted memoryless model."""
    runs = [(si, r) for si, rs in enumerate(strata) for r in rs]
    n, n_strata = len(runs), len(strata)
    onehot = np.zeros((n, n_strata))
    rate = np.zeros(n)
    cap = np.zeros(n)
    start = np.zeros(n)
    for i, (si, r) in enumerate(runs):
        onehot[i, si] = 1.0
        d = sum(1 for x in strata[si] if x.hung)
        expo = sum(x.length for x in strata[si])
        rate[i] = d / expo if d and expo > 0 else 0.0
        cap[i] = r.cap if r.cap is not None else (math.inf if r.hung else r.length)
        start[i] = r.start
    with np.errstate(divide="ignore"):
        draw = rng.exponential(1.0, size=(sims, n)) / np.where(rate > 0, rate, 0.0)
    draw = np.where(rate > 0, draw, math.inf)
    ran = np.minimum(draw, cap)
    keys: dict[object, list[int]] = {}
    for i, (si, r) in enumerate(runs):
        keys.setdefault(r.group if r.group is not None else ("alone", i), []).append(i)
    for members in keys.values():
        if len(members) > 1:  # the first hang of a step ended its siblings
            idx = np.array(members)
            first = np.where(draw[:, idx] < cap[idx], draw[:, idx], math.inf).min(axis=1, keepdims=True)
            ran[:, idx] = np.minimum(ran[:, idx], first)
    hung = (draw <= ran) & (draw < cap)
    end = start + np.where(np.isfinite(ran), ran, 0.0)
    return _batch_fit(np.broadcast_to(start, end.shape), end, hung, onehot)[1]


@dataclass(frozen=True)
class ModelTest:
    """What the hangs say about memorylessness."""

    hangs: int  # hangs in configurations that hung (those carry the information on the shape)
    runs: int
    k: float  # maximum-likelihood Weibull shape
    k_low: float  # 95% profile interval (critical value from the simulation)
    k_high: float
    z: float  # signed root of the likelihood ratio against k = 1
    p_aging: float  # P(z at least this large | memoryless): small = aging
    p_front: float  # P(z at most this small | memoryless): small = front-loaded
    level: float

    @property
    def power_k3(self) -> float:
        """Chance this test calls a Weibull k = 3 hazard aging, at this many hangs (complete samples)."""
        return power_against_k3(self.hangs, self.level)

    @property
    def verdict(self) -> str:
        if self.hangs < 2:
            return "too-few"
        if self.p_aging <= self.level:
            return "aging"
        if self.p_front <= self.level:
            return "front-loaded"
        return "memoryless"

    def shape_text(self) -> str:
        hi = f">{K_MAX:g}" if self.k_high >= K_MAX else f"{self.k_high:.2g}"
        return f"Weibull shape k = {self.k:.2g} (95% interval {self.k_low:.2g}-{hi})"

    def describe(self) -> str:
        v = self.verdict
        if v == "too-few":
            return f"{self.hangs} hang(s): too few to test memorylessness (needs 2)"
        base = f"{self.shape_text()} from {self.hangs} hangs; P(this much aging | memoryless) = {self.p_aging:.2g}"
        if v == "aging":
            return f"aging: {base} <= {self.level:g}"
        if v == "front-loaded":
            return (f"front-loaded (hangs come early in a server's life): {self.shape_text()}; "
                    f"P(this early | memoryless) = {self.p_front:.2g}")
        return (f"memoryless not rejected: {base} > {self.level:g} (weak evidence: at {self.hangs} hangs this test "
                f"finds a Weibull k = 3 aging hazard {self.power_k3:.0%} of the time)")

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"verdict": self.verdict, "hangs": self.hangs, "runs": self.runs,
                                "k": round(self.k, 4), "k_ci95": [round(self.k_low, 4), round(self.k_high, 4)],
                                "z": round(self.z, 4), "p_aging": round(self.p_aging, 5),
                                "p_front_loaded": round(self.p_front, 5), "level": self.level}
        if self.verdict != "aging":  # how much a verdict of no aging is worth
            d["power_vs_weibull_k3"] = round(self.power_k3, 3)
        return d


def memorylessness(strata: Iterable[Sequence[Run]], level: float = 0.05, sims: int = NULL_SIMS) -> ModelTest:
    """Test k = 1 against a Weibull shape from runs grouped by configuration (one list per configuration)."""
    groups = [list(runs) for runs in strata if any(r.hung for r in runs)]
    hangs = sum(1 for runs in groups for r in runs if r.hung)
    n_runs = sum(len(runs) for runs in groups)
    if hangs < 2:
        return ModelTest(hangs, n_runs, 1.0, K_MIN, K_MAX, 0.0, 1.0, 1.0, level)
    obs = [r for runs in groups for r in runs]
    onehot = np.zeros((len(obs), len(groups)))
    i = 0
    for si, runs in enumerate(groups):
        for _ in runs:
            onehot[i, si] = 1.0
            i += 1
    ks, zs_obs = _batch_fit(np.array([[r.start for r in obs]]), np.array([[r.end for r in obs]]),
                            np.array([[r.hung for r in obs]]), onehot)
    k, z = float(ks[0]), float(zs_obs[0])
    norm, _ = _norm(groups)
    top = _loglik(norm, k)
    zs = _null_z(groups, sims, np.random.default_rng(_seed(groups)))
    lrs = np.sort(zs * zs)
    p_aging = float((1 + np.sum(zs >= z - 1e-9)) / (1 + sims))
    p_front = float((1 + np.sum(zs <= z + 1e-9)) / (1 + sims))
    crit = max(3.841, float(lrs[int(0.95 * len(lrs))]))
    return ModelTest(hangs, n_runs, k, _bound(norm, k, top, crit, upper=False), _bound(norm, k, top, crit, upper=True),
                     z, p_aging, p_front, level)


@functools.lru_cache(maxsize=64)
def power_against_k3(hangs: int, level: float = 0.05, sims: int | None = None) -> float:
    """Chance the test rejects memorylessness for `hangs` complete Weibull k = 3 times to hang (simulated:
    20,000 data sets up to 10 hangs, where the figure matters; 2,000 above, where it is near 1)."""
    if hangs < 2:
        return 0.0
    if sims is None:
        sims = 20000 if hangs <= 10 else 2000
    rng = np.random.default_rng(1000 + hangs)
    onehot = np.ones((hangs, 1))
    start = np.zeros((sims, hangs))
    hung = np.ones((sims, hangs), dtype=bool)
    null = np.sort(_batch_fit(start, rng.exponential(1.0, (sims, hangs)), hung, onehot)[1])
    crit = null[min(sims - 1, int(math.ceil((1.0 - level) * sims)))]
    alt = _batch_fit(start, rng.weibull(3.0, (sims, hangs)), hung, onehot)[1]
    return float(np.mean(alt > crit))


# -- the onset ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Onset:
    """No hang before an onset of continuous uptime, then a rate: what the hangs of one configuration say."""

    hangs: int
    first: float  # the earliest uptime at a hang: the onset is at most this
    estimate: float  # unbiased under a shifted exponential (>= 0)
    lower: float  # 95% lower confidence bound (>= 0)
    mean_after: float  # mean time to hang after the onset

    def describe(self) -> str:
        from repro.units import format_duration as fd

        if self.hangs < 2:
            return f"hung after {fd(self.first)} of continuous load (one hang: no bound on the onset yet)"
        return (f"hangs after about {fd(self.estimate)} of continuous load (onset between {fd(self.lower)} and "
                f"{fd(self.first)} at 95%; then a mean of {fd(self.mean_after)})")

    def to_dict(self) -> dict[str, object]:
        return {"hangs": self.hangs, "first_hang_uptime_s": round(self.first, 1), "estimate_s": round(self.estimate, 1),
                # the interval's ends rounded outward: a bound rounded toward the estimate is no bound
                "lower95_s": math.floor(self.lower * 10) / 10, "upper_s": math.ceil(self.first * 10) / 10,
                "mean_after_onset_s": round(self.mean_after, 1)}


def onset_of(uptimes: Sequence[float], conf: float = 0.95, resolution: float = 0.0) -> Onset | None:
    """The onset from the uptimes at which servers of one configuration hung.

    ``resolution``: how far after its stall a hang's uptime may lie (the detector's poll interval: the
    uptime is that of the last observation before the stall was seen); the lower bound is widened by it.
    """
    ts = sorted(float(t) for t in uptimes)
    if not ts:
        return None
    n, t1 = len(ts), ts[0]
    if n == 1:
        return Onset(1, t1, t1, 0.0, t1)
    s = sum(t - t1 for t in ts[1:])
    fq = (n - 1) * ((1.0 - conf) ** (-1.0 / (n - 1)) - 1.0)  # F(2, 2n-2) quantile at conf, closed form
    return Onset(n, t1, max(0.0, t1 - s / (n * (n - 1))), max(0.0, t1 - fq * s / (n * (n - 1)) - resolution),
                 s / (n - 1))


# -- the models the search counts evidence under ---------------------------------------------------------
@dataclass(frozen=True)
class HazardModel:
    """Weibull shapes under which clean runs count; a verdict must hold under every one of them."""

    name: str  # "exponential" | "aging"
    shapes: tuple[float, ...] = (1.0,)
    scale: float = 3600.0  # seconds: uptimes are raised to k in this unit (any fixed value gives the same verdicts)
    test: ModelTest | None = None
    onset: Onset | None = None
    why: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def aging(self) -> bool:
        return self.name == "aging"

    def tau(self, k: float, runs: Iterable[Run], stretch: float = 1.0) -> float:
        """Cumulative hazard of `runs` in units of the shape k (k = 1: seconds of exposure x stretch)."""
        if k == 1.0:
            return stretch * sum(r.length for r in runs)
        c = self.scale
        return c * sum((stretch * r.end / c) ** k - ((stretch * r.start / c) ** k if r.start > 0 else 0.0)
                       for r in runs)

    def fresh_run(self, k: float, length: float, stretch: float = 1.0) -> float:
        """Cumulative hazard of one run of `length` on a fresh server."""
        if length <= 0:
            return 0.0
        return stretch * length if k == 1.0 else self.scale * (stretch * length / self.scale) ** k

    def length_for(self, k: float, tau: float, stretch: float = 1.0) -> float:
        """Length of a run on a fresh server whose cumulative hazard is `tau`."""
        if tau <= 0:
            return 0.0
        if math.isinf(tau):
            return math.inf
        return tau / stretch if k == 1.0 else self.scale * (tau / self.scale) ** (1.0 / k) / stretch

    def to_dict(self) -> dict[str, object]:
        return {"model": self.name, "shapes": [round(k, 4) for k in self.shapes], "why": self.why,
                "test": self.test.to_dict() if self.test else None,
                "onset": self.onset.to_dict() if self.onset else None, **self.extra}


EXPONENTIAL = HazardModel("exponential", (1.0,), why="memoryless model")


def aging_model(test: ModelTest | None, onset: Onset | None, scale: float, why: str) -> HazardModel:
    """Counting under the least and the most aging shape the hangs leave plausible: the ends of the shape's
    interval, the lower one raised to k = 1 (memoryless) where it reaches below; without a test, 1 and K_MAX."""
    known = test is not None and test.verdict != "too-few"
    k_hi = max(1.0, test.k_high) if known else K_MAX  # type: ignore[union-attr]
    k_lo = max(1.0, test.k_low) if known else 1.0  # type: ignore[union-attr]
    shapes = (k_lo,) if k_hi <= k_lo else (k_lo, k_hi)
    return HazardModel("aging", shapes, max(scale, 1.0), test, onset, why)
