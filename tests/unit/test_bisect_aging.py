"""Bisect when the hang needs the server to age: simulated aging servers, the model switch, short restarted trials."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from repro.bisect.search import Search, Settings
from repro.bisect.sim import DirectSim, Hazard, SimModel, SimServers, model_from_dict
from repro.bisect.space import Change, Config, SearchSpace

CHANGES = ("extract=4", "storage=/mnt/nfs/hs", "timeout=120", "retries=3")
H = 3600.0


def space() -> SearchSpace:
    return SearchSpace(1, 16, tuple(Change.parse(c) for c in CHANGES))


def fresh_draws(hz: Hazard, n: int, cfg: Config | None = None) -> list[float]:
    sp = space()
    servers = SimServers(hz, sp, reuse=False)
    rng = random.Random(4)
    return [servers.trial(0, cfg or sp.baseline, math.inf, rng)[2] for _ in range(n)]


def test_simulated_weibull_and_onset_servers_hang_with_the_stated_mean_and_onset() -> None:
    """GIVEN [hazard] shape = weibull (k = 2, mean 1 h) / onset (5 h, then a mean of 1 h) THEN fresh servers
    hang after a mean of 1 h / 6 h, an onset server never before 5 h, and a configuration at half the
    rate takes twice as long (its server ages half as fast)."""
    w = fresh_draws(Hazard(1 / H, 1, shape="weibull", k=2.0), 3000)
    assert statistics.mean(w) == pytest.approx(H, rel=0.05)
    assert statistics.pstdev(w) / statistics.mean(w) < 0.6  # k = 2: CV 0.52 (memoryless: 1)
    o = fresh_draws(Hazard(1 / H, 1, shape="onset", onset=5 * H), 3000)
    assert min(o) >= 5 * H and statistics.mean(o) == pytest.approx(6 * H, rel=0.03)
    half = Hazard(1 / H, 8, rate_at_threshold=0.5, shape="onset", onset=5 * H)
    slow = fresh_draws(half, 500, Config(8, frozenset(space().changes)))
    assert min(slow) >= 10 * H


def test_a_reused_aging_server_keeps_its_age_and_a_fresh_one_starts_from_zero() -> None:
    sp = space()
    hz = Hazard(1 / H, 1, shape="onset", onset=5 * H)
    servers = SimServers(hz, sp, reuse=True)
    rng = random.Random(1)
    c16, c8 = sp.baseline, Config(8, frozenset(sp.changes))
    srv, start, t = servers.trial(0, c16, 3 * H, rng)
    assert start == 0.0 and t > 5 * H
    servers.finish(0, srv, c16, 3 * H, False)
    again, start2, t2 = servers.trial(0, c8, 3 * H, rng)  # another concurrency: the same server goes on
    assert again is srv and start2 == 3 * H and t2 == pytest.approx(t - 3 * H)
    servers.finish(0, again, c8, H, False)
    new, start3, _ = servers.trial(0, c16, 3 * H, rng, fresh=True)  # fresh: not after another configuration
    assert new is not srv and start3 == 0.0


def test_a_resource_grown_by_one_change_hangs_a_reused_server_without_it() -> None:
    """GIVEN orphaned files that grow only with the client's timeout (a client toggle: the server is reused)
    and hang the server once they reach a level THEN a server aged with timeout=120 hangs after the
    toggle is removed, and a fresh server without it never hangs: reuse would wrongly say timeout is
    not needed, which is why an aging search asks for fresh servers."""
    sp = space()
    m = model_from_dict(sp, {"mean_time_to_hang": "10m", "shape": "onset", "resource": "orphaned files",
                             "level": 1000, "growth_per_hour": 1000, "resource_requires": ["timeout"]}, {})
    assert m.hazard.truth(sp).changes == frozenset({Change.parse("timeout=120")})
    with_t, without = Config(16, frozenset({Change.parse("timeout=120")})), Config(16, frozenset())
    servers = SimServers(m.hazard, sp, reuse=True)
    rng = random.Random(3)
    srv, _, t = servers.trial(0, with_t, 2 * H, rng)
    assert H + 1 < t < math.inf  # the level is reached after 1 h of load, then a mean of 10 min
    servers.finish(0, srv, with_t, H + 1, False)  # clean until just past the level
    aged, _, t_aged = servers.trial(0, without, 2 * H, rng)
    assert aged is srv and t_aged < H  # the files are there already: it hangs without the timeout
    fresh = SimServers(m.hazard, sp, reuse=False)
    assert fresh.trial(0, without, 2 * H, rng)[2] == math.inf


def onset_storage() -> Hazard:
    return Hazard(1 / H, 1, ("storage",), shape="onset", onset=4 * H)


def field_search(model: str, seed: int, prior_n: int = 3) -> tuple[Search, DirectSim]:
    """The field's reports: prior_n servers hung after their onset; every later trial on a fresh server,
    capped at 2 h (shorter than the 4 h onset), as the Ray executor or --fresh-server would run them."""
    sp = space()
    m = SimModel(sp, onset_storage(), seed=seed, overhead=90.0)
    rng = random.Random(f"field:{seed}")
    servers = SimServers(m.hazard, sp, reuse=False)
    ups = [servers.trial(0, sp.baseline, math.inf, rng)[2] for _ in range(prior_n)]
    settings = Settings(hazard_model=model, max_trial=2 * H, budget=600 * H, split_runs=True,
                        **({"prior_uptimes": tuple(ups)} if model != "exponential" else
                           {"prior": (len(ups), sum(ups))}))
    ex = DirectSim(m, "bisect", reuse=False)
    return Search(sp, settings, ex), ex


def test_an_aging_hazard_with_short_restarted_trials_never_lets_the_search_call_a_hanging_config_clean() -> None:
    """GIVEN a hang that needs 4 h of continuous uptime and the storage change, its baseline known from 3 field
    hangs, and trials capped at 2 h on fresh servers WHEN bisecting with the default (auto) model THEN no
    configuration that hangs is declared "does NOT hang" from restarted short trials, and the answer is
    the truth (storage, concurrency 1) on every seed -- while the memoryless model, on the same trials,
    calls the storage change not needed or answers nothing (the failure this guards against)."""
    truth = onset_storage().truth(space())
    sp = space()
    for seed in range(8):
        s, ex = field_search("auto", seed)
        r = s.run_all()
        assert r.config == truth, (seed, r.status, [d.text for d in r.decisions if d.phase in ("model", "stop")])
        for d in r.decisions:
            if d.phase == "changes" and d.text.startswith("does NOT hang") and "config" in d.data:
                cfg = Config.from_dict(d.data["config"])
                assert onset_storage().rate_of(sp, cfg) == 0.0, d.text
        assert s.model.aging and ex.fresh_asked > 0
    wrong = 0
    for seed in range(8):
        r = field_search("exponential", seed)[0].run_all()
        wrong += r.config != truth
    assert wrong >= 6


def test_aging_rejected_from_the_baseline_switches_the_model_and_asks_for_fresh_servers() -> None:
    """GIVEN a Weibull k = 4 hazard and 5 baseline hangs WHEN the test rejects memorylessness THEN a "model"
    decision says aging with the shape and the onset, every later step asks for fresh servers, and
    the result carries the model, its test and the onset."""
    sp = SearchSpace(1, 8, (Change.parse("storage=/mnt/nfs/hs"),))
    m = SimModel(sp, Hazard(1 / H, 4, ("storage",), 0.5, shape="weibull", k=4.0), seed=2, overhead=60.0)
    ex = DirectSim(m, "t")
    s = Search(sp, Settings(baseline_hangs=5), ex)
    r = s.run_all()
    model = [d for d in r.decisions if d.phase == "model"]
    assert model and "hazard model: aging" in model[-1].text and "Weibull shape k" in model[-1].text
    assert "hangs after about" in model[-1].text
    assert r.hazard is not None and r.hazard["model"] == "aging" and r.hazard["test"]["verdict"] == "aging"
    assert r.hazard["onset"]["lower95_s"] <= r.hazard["onset"]["upper_s"]
    assert ex.fresh_asked == r.steps - 5  # every step after the baseline
    assert r.config == m.hazard.truth(sp)


def test_exponential_model_is_never_switched_and_never_asks_for_fresh_servers() -> None:
    sp = SearchSpace(1, 8, (Change.parse("storage=/mnt/nfs/hs"),))
    m = SimModel(sp, Hazard(1 / H, 1, ("storage",), shape="onset", onset=2 * H), seed=1, overhead=60.0)
    ex = DirectSim(m, "t")
    r = Search(sp, Settings(baseline_hangs=5, hazard_model="exponential"), ex).run_all()
    assert ex.fresh_asked == 0 and r.hazard is not None and r.hazard["model"] == "exponential"
    assert r.hazard["test"]["verdict"] == "aging"  # tested and reported, not acted on


def test_memoryless_hangs_keep_the_memoryless_model_when_servers_are_kept() -> None:
    """GIVEN a memoryless hazard and the local executor (servers kept, split_runs off) THEN auto stays
    exponential on most seeds: the search behaves as it always did."""
    sp = space()
    stayed = 0
    for seed in range(20):
        m = SimModel(sp, Hazard(1 / H, 1, ("storage",)), seed=seed, overhead=60.0)
        s = Search(sp, Settings(), DirectSim(m, "t"))
        s.run_all()
        stayed += not s.model.aging
    assert stayed >= 17


def test_aging_shapes_with_the_default_settings_find_the_truth() -> None:
    """GIVEN Weibull k = 2 from concurrency 6 and an onset needing storage WHEN bisecting with the defaults
    (servers kept, auto) THEN at least 19 of 20 seeds answer the ground truth."""
    sp = space()
    for hz in (Hazard(1 / H, 6, (), 0.5, shape="weibull", k=2.0), Hazard(0.5 / H, 1, ("storage",), shape="onset",
                                                                        onset=1.5 * H)):
        right = sum(Search(sp, Settings(), DirectSim(SimModel(sp, hz, seed=seed, overhead=60.0), "t")).run_all().config
                    == hz.truth(sp) for seed in range(20))
        assert right >= 19, (hz.shape, right)
