"""The bisect search against simulated ground truth (virtual time, no server)."""

from __future__ import annotations

import math
import random

import pytest

from repro.bisect.search import Outcome, Search, Settings
from repro.bisect.sim import Hazard, SimModel
from repro.bisect.space import Change, Config, SearchSpace
from repro.bisect.stats import RatePosterior

CHANGES = ("extract=4", "storage=/mnt/nfs/hs", "timeout=120", "retries=3")


class Sim:
    """Trials drawn from a known hazard; records every request the search makes."""

    def __init__(self, space: SearchSpace, rate_of, seed: int) -> None:  # type: ignore[no-untyped-def]
        self.space = space
        self.rate_of = rate_of
        self.rng = random.Random(seed)
        self.requests: list[tuple[Config, float]] = []

    def run(self, cfg: Config, cap: float, fresh: bool = False) -> Outcome:
        self.requests.append((cfg, cap))
        lam = self.rate_of(cfg)
        t = self.rng.expovariate(lam) if lam > 0 else math.inf
        run = min(t, cap)
        return Outcome(t < cap, run, 60 + run, 60 + run)


def space() -> SearchSpace:
    return SearchSpace(1, 16, tuple(Change.parse(c) for c in CHANGES))


def search_with(hazard: Hazard, seed: int, **settings: object) -> tuple[Search, Sim]:
    sp = space()
    sim = Sim(sp, lambda cfg: hazard.rate_of(sp, cfg), seed)
    return Search(sp, Settings(**settings), sim), sim  # type: ignore[arg-type]


@pytest.mark.parametrize("name, hazard", [
    ("threshold in concurrency", Hazard(1 / 3600, 6, (), 0.5)),
    ("storage only", Hazard(1 / 3600, 1, ("storage",))),
    ("two toggles and a threshold", Hazard(1 / 3600, 4, ("extract", "timeout"))),
    ("no dependence", Hazard(1 / 3600, 1, ())),
])
def test_search_finds_the_true_minimal_configuration_at_least_95_percent_of_seeds(name: str, hazard: Hazard) -> None:
    """GIVEN a known hazard WHEN searching 40 seeds THEN >= 38 answers equal the ground truth."""
    sp = space()
    truth = hazard.truth(sp)
    right = 0
    for seed in range(40):
        s, _ = search_with(hazard, seed)
        r = s.run_all()
        assert r.status == "minimal"
        right += r.config == truth
    assert right >= 38, f"{name}: {right}/40 correct"


def test_answers_are_never_below_the_truth_because_hangs_are_definitive() -> None:
    """A wrong answer can only be non-minimal: never a concurrency below the threshold or a missing change."""
    hz = Hazard(1 / 3600, 6, ("storage",), 0.5)
    sp = space()
    for seed in range(30):
        r = search_with(hz, seed)[0].run_all()
        assert r.config is not None
        assert r.config.concurrency >= 6
        assert hz.required(sp) <= r.config.changes


def test_first_screening_test_is_sized_from_the_baseline_posterior_not_a_point_estimate() -> None:
    hz = Hazard(1 / 3600, 1, ("storage",))
    s, sim = search_with(hz, 7)
    s.run_all()
    base = [e for e in sim.requests if e[0] == sp_baseline()]
    assert len(base) == 3  # the baseline reproduced 3 times (each trial ends at its hang)
    k, e = 3, sum(min(c, 1e18) for _, c in base[:0]) or s.evidence[sp_baseline()][1]
    probe_cfg, probe_cap = sim.requests[3]  # the smallest configuration, probed for a posterior-sized run
    assert probe_cfg == Config(1, frozenset())
    assert probe_cap == pytest.approx(RatePosterior(k, e).clean_needed(0.05, 1.0), rel=1e-6)
    cfg, cap = sim.requests[4]  # the plain server at the top, screened first
    assert cfg == Config(16, frozenset())
    expected = RatePosterior(k, e).clean_needed(0.1, ratio=0.5)
    assert cap == pytest.approx(expected, rel=1e-6)
    # ... which is the Gamma mixture's answer, longer than the point estimate's ln(10)/(ratio*rate)
    assert cap > math.log(10) / (0.5 * k / e)


def sp_baseline() -> Config:
    return space().baseline


def test_hanging_config_ends_the_step_at_the_first_hang() -> None:
    hz = Hazard(1.0, 1, ())
    s, sim = search_with(hz, 1, prior=(3, 3.0))
    r = s.run_all()
    assert r.config == Config(1, frozenset())
    assert all(cap >= 0 for _, cap in sim.requests)
    assert r.trial_time < 60 * len(sim.requests) + 100  # every step was a quick hang


def test_observation_contradicting_monotonicity_is_reported() -> None:
    """GIVEN a hazard that hangs at concurrency 2 but never at 3-16 (except the baseline) THEN a warning says so."""
    sp = SearchSpace(1, 16)

    def rate(cfg: Config) -> float:
        return 1 / 600 if cfg.concurrency in (2, 16) else 0.0

    sim = Sim(sp, rate, 3)
    s = Search(sp, Settings(lowest_prior=0.01), sim)
    # Force evidence: a long clean run at 12 and then a hang at 2.
    s.evidence[Config(16, frozenset())] = [3, 1800.0]
    s.evidence[Config(12, frozenset())] = [0, 50 * 3600.0]
    s.evidence[Config(2, frozenset())] = [1, 300.0]
    s._check_monotone(frozenset(), 2)
    assert any("contradicts monotonicity" in w and "concurrency 12" in w for w in s.warnings)


def test_no_warning_when_clean_runs_are_explained_by_chance() -> None:
    sp = SearchSpace(1, 16)
    s = Search(sp, Settings(), Sim(sp, lambda c: 0.0, 0))
    s.evidence[Config(16, frozenset())] = [3, 3 * 3600.0]
    s.evidence[Config(12, frozenset())] = [0, 600.0]
    s.evidence[Config(2, frozenset())] = [1, 3600.0]
    s._check_monotone(frozenset(), 2)
    assert s.warnings == []


def test_budget_stops_the_search_with_status_budget() -> None:
    hz = Hazard(1 / 3600, 8, ("storage",))
    s, _ = search_with(hz, 2, budget=5 * 3600.0)
    r = s.run_all()
    assert r.status == "budget"
    assert r.config is None
    assert r.wall <= 5 * 3600.0 + 60 * r.steps


def test_given_prior_replaces_baseline_reproduction() -> None:
    hz = Hazard(1 / 3600, 1, ())
    s, sim = search_with(hz, 4, prior=(3, 3 * 3600.0))
    s.run_all()
    assert sim.requests[0][0] != space().baseline  # no baseline trial: the first step already shrinks


def test_threshold_posterior_is_zero_above_a_hang_and_sums_to_one() -> None:
    sp = SearchSpace(1, 8)
    s = Search(sp, Settings(), Sim(sp, lambda c: 0.0, 0))
    s.evidence[Config(8, frozenset())] = [3, 3600.0]
    s.evidence[Config(5, frozenset())] = [1, 100.0]
    s.evidence[Config(3, frozenset())] = [0, 36000.0]
    post = s.threshold_posterior(frozenset())
    assert sum(post) == pytest.approx(1.0)
    assert post[5:] == [0.0, 0.0, 0.0]  # theta in 6..8 impossible: 5 hung
    assert post[3] + post[4] > 0.9  # 3 was clean for long: the threshold is 4 or 5


def test_parallel_simulated_trials_pool_exposure_and_finish_sooner() -> None:
    from repro.bisect.sim import SimBackend

    sp = space()

    class Hooks:
        def trial_start(self, slot: int, **kw: object) -> int:
            return slot

        def heartbeat(self, *a: object) -> None: ...

        def trial_end(self, *a: object, **kw: object) -> None: ...

    model = SimModel(sp, Hazard(1e-9, 1, ()), seed=1, overhead=60.0)
    one = SimBackend(model, 1).run_step(0, Config(1, frozenset()), 3600.0, Hooks())
    four = SimBackend(model, 4).run_step(0, Config(1, frozenset()), 3600.0, Hooks())
    assert not one.hung and not four.hung
    assert four.exposure == pytest.approx(one.exposure)  # the same evidence ...
    assert four.wall == pytest.approx(60.0 + 900.0)  # ... in a quarter of the time
    assert four.trial_time == pytest.approx(4 * (60.0 + 900.0))


def test_recheck_rounds_never_spend_more_than_the_change_budget() -> None:
    from repro.bisect.search import recheck_budget

    assert sum(recheck_budget(0.025, r) for r in range(1, 60)) <= 0.025 + 1e-15
    assert recheck_budget(0.025, 1) == pytest.approx(0.02)


def test_error_budget_is_split_between_changes_and_concurrency() -> None:
    both = Search(space(), Settings(alpha=0.05), Sim(space(), lambda c: 0.0, 0))
    assert both.alpha_dd + both.alpha_c == pytest.approx(0.05)
    only_c = Search(SearchSpace(1, 8), Settings(alpha=0.05), Sim(space(), lambda c: 0.0, 0))
    assert (only_c.alpha_dd, only_c.alpha_c) == (0.0, 0.05)


def test_error_budget_is_split_three_ways_with_a_storage_ladder() -> None:
    sp = SearchSpace(1, 16, (Change.parse("extract=4"), Change.parse("storage=/data/hs,/mnt/nfs/hs")))
    s = Search(sp, Settings(alpha=0.06), Sim(sp, lambda c: 0.0, 0))
    assert (s.alpha_dd, s.alpha_st, s.alpha_c) == pytest.approx((0.02, 0.02, 0.02))


def test_a_hang_in_the_probe_of_the_smallest_configuration_ends_the_search() -> None:
    """GIVEN a hang that needs nothing WHEN the probe of (lowest concurrency, plain server) hangs
    THEN no change or concurrency is tested: the next trials only confirm that configuration."""
    hz = Hazard(1 / 3600, 1, ())
    for seed in range(10):
        s, sim = search_with(hz, seed)
        r = s.run_all()
        assert r.config == Config(1, frozenset())
        tested = {cfg for cfg, _ in sim.requests}
        if any(d.phase == "probe" and d.data.get("hung") for d in r.decisions):
            assert tested == {sp_baseline(), Config(1, frozenset())}
            assert not [d for d in r.decisions if d.phase in ("changes", "concurrency")]


def test_a_clean_probe_decides_nothing_and_its_exposure_counts_later() -> None:
    """GIVEN a threshold at 6 THEN the probe at 1 stays clean, the search still finds 6, and the
    probe's exposure is in the evidence of concurrency 1 on a plain server."""
    hz = Hazard(1 / 3600, 6, ())
    s, sim = search_with(hz, 3)
    r = s.run_all()
    assert r.config == Config(6, frozenset())
    probe_cap = sim.requests[3][1]
    assert sim.requests[3][0] == Config(1, frozenset())
    assert s.exposure(Config(1, frozenset())) >= probe_cap


def test_probe_can_be_switched_off() -> None:
    hz = Hazard(1 / 3600, 1, ())
    s, sim = search_with(hz, 0, probe_minimum=0.0)  # 0: no probe
    s.run_all()
    assert not [d for d in s.decisions if d.phase == "probe"]
    assert sim.requests[3][0] == Config(16, frozenset())  # straight into ddmin


def ladder_space() -> SearchSpace:
    return SearchSpace(1, 8, (Change.parse("extract=4"), Change.parse("storage=/ssd/hs,/hdd/hs,/mnt/nfs/hs")))


@pytest.mark.parametrize("hangs_from", ["/ssd/hs", "/hdd/hs", "/mnt/nfs/hs"])
def test_storage_ladder_finds_the_plainest_path_that_still_hangs(hangs_from: str) -> None:
    """GIVEN storage paths ordered plainest first, and hangs from one rung up
    WHEN searching 40 seeds THEN >= 38 answers name that rung (and never a plainer one)."""
    sp = ladder_space()
    hz = Hazard(1 / 3600, 1, ("storage",), storage_from=hangs_from)
    truth = hz.truth(sp)
    assert truth.changes == frozenset({Change("storage", hangs_from)})
    right = 0
    for seed in range(40):
        sim = Sim(sp, lambda cfg: hz.rate_of(sp, cfg), seed)
        r = Search(sp, Settings(), sim).run_all()  # type: ignore[arg-type]
        assert r.config is not None
        used = [c.value for c in r.config.changes if c.name == "storage"]
        assert used and sp.storage_rungs.index(used[0]) >= sp.storage_rungs.index(hangs_from)
        right += r.config == truth
    assert right >= 38, f"{right}/40"


def test_sim_hazard_with_a_storage_ladder_hangs_from_its_rung_up() -> None:
    sp = ladder_space()
    hz = Hazard(1.0, 1, ("storage",), storage_from="/hdd/hs")
    rate = {p: hz.rate_of(sp, Config(8, frozenset({Change("storage", p)}))) for p in sp.storage_rungs}
    assert rate == {"/ssd/hs": 0.0, "/hdd/hs": 1.0, "/mnt/nfs/hs": 1.0}
    assert hz.rate_of(sp, Config(8, frozenset())) == 0.0  # the plain storage


@pytest.mark.parametrize("step_target", [0.5, 0.25])
def test_a_clean_test_away_from_the_lowest_hang_cuts_p_threshold_below_it_by_step_target(step_target: float) -> None:
    """GIVEN a threshold hazard WHEN a concurrency below the lowest hang but not next to it stays clean
    THEN its P(threshold <= c) falls to step_target x what it was (a later clean test higher up counts
    against it too, so it is not settled in full), and next to the lowest hang it is settled at alpha."""
    seen = []
    for seed in range(6):
        s, _ = search_with(Hazard(1 / 3600, 6, (), 0.5), seed, step_target=step_target, probe_minimum=0)
        r = s.run_all()
        assert r.status == "minimal"
        pending = None
        for d in r.decisions:
            if d.phase != "concurrency":
                continue
            if "cap" in d.data:
                pending = d.data
            elif d.data.get("hung") is False and pending is not None:
                assert d.data["concurrency"] == pending["concurrency"]
                seen.append((pending["p_hangs"], d.data["p_hangs"]))
                pending = None
            elif d.data.get("hung") is True:
                pending = None
    away = [(before, after) for before, after in seen if after > s.alpha_c]
    assert away, "no clean test away from the lowest hang in 6 seeds"
    for before, after in away:
        assert after == pytest.approx(before * step_target, rel=0.02)
