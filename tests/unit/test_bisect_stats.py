"""The Gamma-Poisson statistics behind `repro bisect`, checked against the numbers in DESIGN.md."""

from __future__ import annotations

import math
import random

import pytest

from repro.bisect.stats import (RatePosterior, binomial_split_pvalue, chi2_ppf, clean_multiple, gamma_cdf,
                                gamma_ppf, gammainc_lower, rate_upper_bound)


@pytest.mark.parametrize("hangs, multiple", [(1, 19.0), (3, 5.1), (5, 4.1)])
def test_clean_run_must_last_19_5_1_4_1_mean_times_to_hang_after_1_3_5_hangs(hangs: int, multiple: float) -> None:
    """GIVEN k baseline hangs WHEN sizing a clean run at 95% THEN it lasts DESIGN.md's multiple of E/k."""
    assert clean_multiple(hangs, 0.05) == pytest.approx(multiple, abs=0.05)


def test_clean_multiple_tends_to_ln20_as_hangs_grow() -> None:
    assert clean_multiple(2000, 0.05) == pytest.approx(math.log(20), rel=1e-3)
    assert clean_multiple(50, 0.05) > clean_multiple(2000, 0.05)


@pytest.mark.parametrize("hangs, bound", [(0, 3.00), (1, 4.74), (3, 7.75)])
def test_upper_bound_on_rate_is_chi2_over_2T(hangs: int, bound: float) -> None:
    """After k hangs in T the 95% upper bound is 3.00/T, 4.74/T, 7.75/T for k = 0, 1, 3."""
    assert rate_upper_bound(hangs, 1.0) == pytest.approx(bound, abs=0.005)
    assert rate_upper_bound(hangs, 10.0) == pytest.approx(bound / 10, abs=0.0005)


def test_posterior_clean_needed_makes_survival_exactly_alpha() -> None:
    post = RatePosterior.from_counts(3, 3 * 3600.0)  # 3 hangs in 3 h
    t = post.clean_needed(0.05)
    assert post.survive(t) == pytest.approx(0.05, rel=1e-9)
    assert t == pytest.approx(5.143 * 3600, rel=1e-3)  # 5.1 mean times to hang
    # a config allowed to hang at half the rate needs twice the clean exposure
    assert post.clean_needed(0.05, ratio=0.5) == pytest.approx(2 * t)


def test_survival_is_the_gamma_mixture_of_exponentials() -> None:
    """(b/(b+T))^a equals E[exp(-lam T)] under Gamma(a, b): checked by Monte Carlo."""
    post = RatePosterior(3, 2.0)
    rng = random.Random(1)
    draws = [math.exp(-rng.gammavariate(3, 1 / 2.0) * 1.5) for _ in range(200_000)]
    assert post.survive(1.5) == pytest.approx(sum(draws) / len(draws), abs=0.003)


def test_gamma_cdf_matches_closed_forms() -> None:
    # shape 1: exponential; shape 2: 1 - e^-x (1 + x)
    for x in (0.1, 1.0, 3.0, 12.0):
        assert gammainc_lower(1, x) == pytest.approx(1 - math.exp(-x), rel=1e-12)
        assert gammainc_lower(2, x) == pytest.approx(1 - math.exp(-x) * (1 + x), rel=1e-10)
    assert gamma_cdf(0.0, 2.0, 1.0) == 0.0


def test_chi2_quantiles_match_tables() -> None:
    assert chi2_ppf(0.95, 1) == pytest.approx(3.841, abs=1e-3)
    assert chi2_ppf(0.95, 10) == pytest.approx(18.307, abs=1e-3)
    assert chi2_ppf(0.025, 6) == pytest.approx(1.237, abs=1e-3)


def test_gamma_ppf_inverts_cdf() -> None:
    for shape in (0.5, 1.0, 3.0, 40.0):
        for q in (0.025, 0.5, 0.975):
            x = gamma_ppf(q, shape, 2.5)
            assert gamma_cdf(x, shape, 2.5) == pytest.approx(q, abs=1e-9)


def test_credible_interval_contains_mean_and_narrows_with_more_hangs() -> None:
    few = RatePosterior.from_counts(3, 3.0)
    many = RatePosterior.from_counts(30, 30.0)
    for p in (few, many):
        lo, hi = p.interval(0.95)
        assert lo < p.mean < hi
    assert (many.interval()[1] - many.interval()[0]) < (few.interval()[1] - few.interval()[0]) / 2


def test_improper_posterior_gives_no_interval_and_no_clean_size() -> None:
    empty = RatePosterior.from_counts(0, 5.0)
    assert not empty.proper
    assert empty.interval() == (0.0, math.inf)
    assert math.isinf(empty.clean_needed(0.05))


def test_binomial_split_of_hangs_under_equal_rates() -> None:
    """k_A ~ Binomial(K, T_A/(T_A+T_B)): 0 of 6 hangs in half the exposure is rare (1/64)."""
    assert binomial_split_pvalue(0, 6, 1.0, 1.0) == pytest.approx(1 / 64)
    assert binomial_split_pvalue(6, 6, 1.0, 1.0) == pytest.approx(1.0)
