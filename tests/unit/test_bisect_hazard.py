"""The test of memorylessness behind `repro bisect --hazard-model auto`, the onset bound, and the hazard models.

Stated power (memoryless against a Weibull k = 3 time to hang, complete samples, level 0.05):
about 34% at 3 hangs, 77% at 5 hangs, 99% at 10 hangs. At 3 hangs the test misses most aging
hazards; the search says so when it reports "memoryless not rejected".
"""

from __future__ import annotations

import math
import random

import pytest

from repro.bisect.hazard import (EXPONENTIAL, K_MAX, HazardModel, Run, aging_model, memorylessness, onset_of,
                                 power_against_k3)

POWER_K3 = {3: 0.34, 5: 0.77, 10: 0.99}  # the figures BENCHMARKS.md and the docstrings state


def hangs(draw, n: int) -> list[Run]:  # type: ignore[no-untyped-def]
    return [Run(0.0, draw(), True) for _ in range(n)]


@pytest.mark.parametrize("n", [3, 5, 10])
def test_power_against_weibull_k3_is_the_stated_figure_at_3_5_and_10_hangs(n: int) -> None:
    """GIVEN n times to hang from a Weibull k = 3 hazard THEN the 5% test calls them aging with the stated
    power (34% / 77% / 100%): low at 3 hangs, and said so."""
    assert power_against_k3(n) == pytest.approx(POWER_K3[n], abs=0.02)


def test_the_full_test_has_the_stated_power_and_size_at_5_hangs() -> None:
    """The test as the search runs it (simulated null distribution per data set) agrees with the table:
    it calls Weibull k = 3 samples of 5 aging about 77% of the time, exponential ones at most ~5%."""
    rng = random.Random(7)
    alt = sum(memorylessness([hangs(lambda: rng.weibullvariate(3600.0, 3.0), 5)], sims=200).verdict == "aging"
              for _ in range(100)) / 100
    null = sum(memorylessness([hangs(lambda: rng.expovariate(1 / 3600.0), 5)], sims=200).verdict == "aging"
               for _ in range(100)) / 100
    assert alt == pytest.approx(POWER_K3[5], abs=0.12)
    assert null <= 0.10


def test_the_calibrated_test_keeps_its_level_at_3_hangs_where_the_chi_square_would_not() -> None:
    """GIVEN memoryless hangs, 3 of them THEN the test says aging at most ~5% of the time (the large-sample
    chi-square critical value would say it 22% of the time)."""
    rng = random.Random(11)
    rejected = sum(memorylessness([hangs(lambda: rng.expovariate(1 / 600.0), 3)], sims=200).verdict == "aging"
                   for _ in range(150))
    assert rejected <= 12  # <= 8% of 150 (5% expected)


def test_a_sharp_onset_is_aging_from_3_hangs_and_the_onset_interval_contains_it() -> None:
    """GIVEN three servers that hung after 5h02m, 5h10m and 5h31m THEN aging, k above 1 with an interval
    above 1, and the onset bound [lower, first hang] contains about 5 h."""
    ups = [5 * 3600 + 120, 5 * 3600 + 600, 5 * 3600 + 1860]
    t = memorylessness([[Run(0.0, u, True) for u in ups]])
    assert t.verdict == "aging" and t.k > 5 and t.k_low > 1
    o = onset_of(ups)
    assert o is not None and o.first == ups[0] and o.lower <= 5 * 3600 <= o.first
    assert "hangs after about" in o.describe() and "at 95%" in o.describe()


def test_onset_lower_bound_covers_the_true_onset_95_percent_of_the_time() -> None:
    """Under a shifted exponential (no hang before T0, then a rate) the 95% lower bound is below T0 at
    least 95% of the time, and the earliest hang is never below it."""
    rng = random.Random(3)
    t0, covered = 3600.0, 0
    for _ in range(2000):
        ups = [t0 + rng.expovariate(1 / 900.0) for _ in range(4)]
        o = onset_of(ups)
        assert o is not None and o.first >= t0
        covered += o.lower <= t0
    assert covered / 2000 >= 0.94


def test_hang_uptimes_a_poll_late_still_have_an_onset_bound_below_the_onset() -> None:
    """GIVEN servers whose onsets lie 0-1.2 s apart and whose hangs strike at once but are recorded up to
    one 1 s poll late THEN with that resolution the lower bound is below every onset (without it, it
    is above the earliest one)."""
    onsets = [5.18, 5.26, 6.08, 6.25, 6.34]
    ups = [u + 0.98 for u in onsets]
    plain, widened = onset_of(ups), onset_of(ups, resolution=1.0)
    assert plain is not None and widened is not None
    assert plain.lower > min(onsets)
    assert widened.lower <= min(onsets) and widened.lower == pytest.approx(plain.lower - 1.0)
    assert widened.first == plain.first and widened.estimate == plain.estimate


def test_shape_is_recovered_from_censored_and_left_truncated_runs() -> None:
    """GIVEN runs of reused servers (starting at an uptime > 0) and clean runs cut at a cap, from a Weibull
    k = 2.5 hazard THEN the fit finds k near 2.5: truncation and censoring are accounted for."""
    rng = random.Random(5)
    runs = []
    lam = 3600.0
    while len(runs) < 200:
        start = rng.choice([0.0, 0.0, rng.uniform(0, 3000)])
        # time to hang given survival to `start`
        t = lam * ((start / lam) ** 2.5 + rng.expovariate(1.0)) ** (1 / 2.5)
        cap = start + rng.uniform(600, 6000)
        runs.append(Run(start, min(t, cap), t <= cap, cap - start))
    test = memorylessness([runs], sims=20)
    assert test.k == pytest.approx(2.5, rel=0.2)
    assert test.k_low < 2.5 < test.k_high
    assert test.verdict == "aging"


def test_configurations_keep_their_own_scales_and_share_the_shape() -> None:
    """GIVEN exponential hangs at two configurations whose rates differ 20-fold THEN pooling them is not
    mistaken for a shape: each configuration has its own scale, memorylessness is not rejected."""
    rng = random.Random(9)
    fast = hangs(lambda: rng.expovariate(1 / 300.0), 6)
    slow = hangs(lambda: rng.expovariate(1 / 6000.0), 6)
    t = memorylessness([fast, slow])
    assert t.verdict == "memoryless" and t.k_low < 1 < t.k_high


def test_configurations_without_a_hang_carry_no_information_on_the_shape() -> None:
    rng = random.Random(2)
    base = hangs(lambda: rng.expovariate(1 / 600.0), 4)
    a = memorylessness([base])
    b = memorylessness([base, [Run(0.0, 50000.0, False)]])
    assert (a.k, a.p_aging) == (b.k, b.p_aging)


def test_too_few_hangs_give_no_verdict_and_say_so() -> None:
    t = memorylessness([[Run(0.0, 100.0, True)]])
    assert t.verdict == "too-few" and "too few" in t.describe()


def test_the_same_runs_give_the_same_numbers_so_a_resumed_search_decides_alike() -> None:
    runs = [[Run(0.0, 1000.0, True), Run(0.0, 1900.0, True), Run(0.0, 2500.0, True), Run(0.0, 900.0, False)]]
    assert memorylessness(runs) == memorylessness([list(r) for r in runs])


def test_a_memoryless_verdict_states_its_weak_power() -> None:
    rng = random.Random(1)
    t = memorylessness([hangs(lambda: rng.expovariate(1 / 600.0), 3)])
    assert t.verdict == "memoryless"
    assert "weak evidence" in t.describe() and "34%" in t.describe()


def test_exponential_model_counts_seconds_and_aging_counts_continuous_uptime() -> None:
    """k = 1: exposure adds across restarts (two 1 h runs = one 2 h run). k = 4: two fresh 1 h runs are
    worth 1/8 of one 2 h run, and a continued run (1 h -> 2 h of uptime) is worth the 2 h run minus the first."""
    short = [Run(0.0, 3600.0, False), Run(0.0, 3600.0, False)]
    long = [Run(0.0, 7200.0, False)]
    assert EXPONENTIAL.tau(1.0, short) == EXPONENTIAL.tau(1.0, long) == 7200.0
    m = HazardModel("aging", (1.0, 4.0), scale=3600.0)
    assert m.tau(4.0, short) == pytest.approx(m.tau(4.0, long) / 8)
    cont = [Run(0.0, 3600.0, False), Run(3600.0, 7200.0, False)]
    assert m.tau(4.0, cont) == pytest.approx(m.tau(4.0, long))
    assert m.length_for(4.0, m.fresh_run(4.0, 5000.0, 0.5), 0.5) == pytest.approx(5000.0)


def test_aging_model_counts_under_the_least_and_the_most_aging_plausible_shapes() -> None:
    """The interval's ends; the lower one raised to k = 1 (memoryless) when it reaches below."""
    ups = [5 * 3600 + 120, 5 * 3600 + 600, 5 * 3600 + 1860]
    t = memorylessness([[Run(0.0, u, True) for u in ups]])
    m = aging_model(t, onset_of(ups), 3600.0, "test")
    assert m.aging and m.shapes == pytest.approx((t.k_low, t.k_high)) and t.k_low > 1
    assert aging_model(None, None, 3600.0, "forced").shapes == (1.0, K_MAX)
    weak = memorylessness([[Run(0.0, u, True) for u in (1000.0, 2000.0, 3500.0)]])
    assert weak.k_low < 1 and aging_model(weak, None, 3600.0, "t").shapes == pytest.approx((1.0, weak.k_high))
    assert math.isfinite(m.to_dict()["test"]["k"])  # type: ignore[index]
