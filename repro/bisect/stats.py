"""Statistics for rare, stochastic hangs: a Gamma-Poisson model over exposure time.

A configuration hangs as a Poisson process in run time after warm-up, at rate
``lam`` (hangs per second of exposure). With ``k`` hangs seen in exposure ``E``
and a Gamma(a0, b0) prior (shape, rate), the posterior is Gamma(a0 + k, b0 + E).

* A hang is definitive; only "did not hang" is uncertain.
* The chance that a configuration with that posterior rate survives ``T`` of
  clean exposure is ``(b / (b + T)) ** a`` (the Gamma mixture of ``exp(-lam T)``).
* A clean trial long enough that this chance is below ``alpha`` is evidence,
  at level ``alpha``, that the configuration does not hang like the baseline.

Two priors matter here (both are the conventional choices and reproduce the
numbers in DESIGN.md):

* ``a0 = 0, b0 = 0`` (scale-free) for "given what the baseline showed": after
  1 / 3 / 5 baseline hangs a clean run must last 19x / 5.1x / 4.1x the mean
  time to hang (E/k) before it says "does not hang" at 95%.
* ``a0 = 1, b0 = 0`` (flat) for the upper bound on a rate:
  ``chi2(0.95; 2k+2) / (2T)``, i.e. 3.00/T, 4.74/T, 7.75/T for k = 0, 1, 3.

Only math and the standard library: the incomplete gamma function is the
usual series / continued-fraction pair, inverted by bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_EPS = 1e-15
_FPMIN = 1e-300


def gammainc_lower(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x) for a > 0, x >= 0."""
    if a <= 0:
        raise ValueError("gammainc_lower needs a > 0")
    if x <= 0:
        return 0.0
    lg = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        # series: P = e^{-x} x^a / Gamma(a+1) * sum x^n / ((a+1)...(a+n))
        term = 1.0 / a
        total = term
        ap = a
        for _ in range(10000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPS:
                break
        return min(1.0, total * math.exp(lg))
    # continued fraction for Q = 1 - P (modified Lentz)
    b = x + 1.0 - a
    c = 1.0 / _FPMIN
    d = 1.0 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < _FPMIN:
            d = _FPMIN
        c = b + an / c
        if abs(c) < _FPMIN:
            c = _FPMIN
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return max(0.0, 1.0 - math.exp(lg) * h)


def gamma_cdf(x: float, shape: float, rate: float) -> float:
    return gammainc_lower(shape, rate * x) if x > 0 else 0.0


def gamma_ppf(q: float, shape: float, rate: float) -> float:
    """Quantile of Gamma(shape, rate) by bisection on the CDF (monotone, robust)."""
    if not 0.0 < q < 1.0:
        raise ValueError("quantile level must be in (0, 1)")
    if shape <= 0 or rate <= 0:
        raise ValueError("Gamma quantile needs shape > 0 and rate > 0")
    lo, hi = 0.0, max(1.0, shape) / rate
    while gamma_cdf(hi, shape, rate) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if gamma_cdf(mid, shape, rate) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


def chi2_ppf(q: float, dof: float) -> float:
    """Chi-square quantile: chi2(q; dof) = 2 * Gamma(dof/2, 1) quantile."""
    return 2.0 * gamma_ppf(q, dof / 2.0, 1.0)


def rate_upper_bound(hangs: int, exposure: float, conf: float = 0.95) -> float:
    """One-sided upper bound on the rate after `hangs` in `exposure`: chi2(conf; 2k+2) / (2T)."""
    if exposure <= 0:
        return math.inf
    return chi2_ppf(conf, 2 * hangs + 2) / (2.0 * exposure)


@dataclass(frozen=True)
class RatePosterior:
    """Gamma(shape, rate) posterior on hangs per second of exposure."""

    shape: float
    rate: float  # seconds of exposure (plus the prior's pseudo-exposure)

    @classmethod
    def from_counts(cls, hangs: int, exposure: float, prior_shape: float = 0.0,
                    prior_rate: float = 0.0) -> "RatePosterior":
        return cls(prior_shape + hangs, prior_rate + exposure)

    def update(self, hangs: int, exposure: float) -> "RatePosterior":
        return RatePosterior(self.shape + hangs, self.rate + exposure)

    @property
    def proper(self) -> bool:
        return self.shape > 0 and self.rate > 0

    @property
    def mean(self) -> float:
        """Posterior mean rate (per second)."""
        return self.shape / self.rate if self.rate > 0 else math.inf

    @property
    def mean_time_to_hang(self) -> float:
        """rate/shape: the exposure per hang seen so far (E/k with the scale-free prior)."""
        return self.rate / self.shape if self.shape > 0 else math.inf

    def interval(self, conf: float = 0.95) -> tuple[float, float]:
        """Equal-tailed credible interval for the rate (per second)."""
        if not self.proper:
            return (0.0, math.inf)
        tail = (1.0 - conf) / 2.0
        return gamma_ppf(tail, self.shape, self.rate), gamma_ppf(1.0 - tail, self.shape, self.rate)

    def upper(self, conf: float = 0.95) -> float:
        if not self.proper:
            return math.inf
        return gamma_ppf(conf, self.shape, self.rate)

    def survive(self, clean: float, ratio: float = 1.0) -> float:
        """P(no hang in `clean` seconds) for a configuration whose rate is `ratio` x this posterior's."""
        if clean <= 0:
            return 1.0
        if self.shape <= 0:
            return 1.0
        return math.exp(-self.shape * math.log1p(ratio * clean / self.rate))

    def clean_needed(self, alpha: float, ratio: float = 1.0) -> float:
        """Clean exposure after which `survive(.) <= alpha`: b * (alpha^(-1/a) - 1) / ratio."""
        if not 0.0 < alpha < 1.0:
            raise ValueError("alpha must be in (0, 1)")
        if not self.proper:
            return math.inf
        return self.rate * math.expm1(-math.log(alpha) / self.shape) / ratio


def clean_multiple(hangs: int, alpha: float = 0.05) -> float:
    """How many mean times to hang (E/k) a clean run must last after `hangs` baseline hangs."""
    if hangs < 1:
        return math.inf
    return hangs * math.expm1(-math.log(alpha) / hangs)


def binomial_split_pvalue(k_a: int, total: int, t_a: float, t_b: float) -> float:
    """Two configs, equal rates: k_A ~ Binomial(K, T_A/(T_A+T_B)). One-sided P(k <= k_a)."""
    if total == 0:
        return 1.0
    p = t_a / (t_a + t_b)
    return sum(math.comb(total, i) * p**i * (1 - p) ** (total - i) for i in range(k_a + 1))


def fmt_rate(per_second: float) -> str:
    """A rate as hangs per hour, and as a mean time to hang."""
    if per_second <= 0:
        return "0/h"
    if math.isinf(per_second):
        return "inf/h"
    per_hour = per_second * 3600.0
    return f"{per_hour:.3g}/h"


def fmt_interval(post: RatePosterior, conf: float = 0.95) -> str:
    lo, hi = post.interval(conf)
    return f"{fmt_rate(post.mean)} [{int(conf * 100)}% CI {fmt_rate(lo)}-{fmt_rate(hi)}]"
