"""Calibration of `repro bisect` against simulated ground truth.

For each hazard shape and seed, a baseline mean time to hang is drawn
(log-uniform between 20 min and 6 h), trials are simulated in virtual time
(`repro.bisect.sim`), and three searches look for the minimal configuration:

* **bisect**: `repro bisect`'s search (posterior-sized clean trials, ddmin with
  re-checks, Bayesian threshold bisection, confirmation with several hangs).
* **fixed**: the same baseline (3 hangs), then ddmin over the changes and a
  binary search over concurrency in which every test is ONE trial of a fixed
  duration D = m x (baseline mean time to hang); a trial that hangs stops at
  the hang (the stronger variant; "sessions" charges D for every trial).
* **grid**: the same baseline, then one trial of D = m x MTTH for every
  (concurrency, subset of changes); the answer is the hanging configuration
  with the fewest changes, then the lowest concurrency.

The competitors are held to the same error rate: for each shape, m is the
smallest value on a grid whose correctness on the same seeds is at least
bisect's. Trial-hours count every trial's run time plus a start-up overhead.

Aging shapes (``weibull2``, ``weibull4``, ``onset``): a server's time to hang is
not memoryless; bisect's trials run on simulated servers that are reused as the
real backend reuses them (a clean server serves the slot's next trial with the
same launch settings, unless the search asks for fresh servers), so a server's
age carries over. Each aging shape is searched twice: first with today's model
(``--baseline-model exponential``: memoryless, servers reused), then with the
model under test (``--hazard-model``, auto by default). The fixed and grid
searches run every trial on a fresh server.

    .venv/bin/python benchmarks/bisect_calibration.py --seeds 200 [--shape threshold] [--jobs 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repro.bisect.search import Outcome, Search, Settings  # noqa: E402
from repro.bisect.sim import DirectSim, Hazard, SimModel, SimServers  # noqa: E402
from repro.bisect.space import Change, Config, SearchSpace  # noqa: E402

# storage is a ladder: plain (tmpfs) < a local disk < the network path of the field setup
CHANGES = ["extract=4", "storage=/data/local/hs,/mnt/nfs/hs", "timeout=120", "retries=3", "prefix-caching=on",
           "async-scheduling=off"]
LO, HI = 1, 32
OVERHEAD = 90.0
SHAPES: dict[str, dict[str, Any]] = {
    # hangs only from concurrency 12 up, twice as slowly at 12 as at 32
    "threshold": {"threshold": 12, "rate_at_threshold": 0.5, "requires": ()},
    # hangs only with the network storage path (not the local disk), at any concurrency
    "storage": {"threshold": LO, "requires": ("storage",), "storage_from": "/mnt/nfs/hs"},
    # needs extraction AND a client timeout, from concurrency 8 up
    "toggles": {"threshold": 8, "requires": ("extract", "timeout")},
    # hangs whatever the configuration
    "none": {"threshold": LO, "requires": ()},
    # -- aging: a server's time to hang is not memoryless (the mean is the drawn MTTH) --
    # Weibull k=2 on one server, hangs only from concurrency 12 up (the threshold shape's structure)
    "weibull2": {"threshold": 12, "rate_at_threshold": 0.5, "requires": (), "shape": "weibull", "k": 2.0},
    # Weibull k=4, needs extraction AND a client timeout from concurrency 8 up (the toggles structure)
    "weibull4": {"threshold": 8, "requires": ("extract", "timeout"), "shape": "weibull", "k": 4.0},
    # no hang before 3/4 of the MTTH of continuous uptime, then a rate (mean 1/4 MTTH): the network
    # storage path only, at any concurrency (the storage structure)
    "onset": {"threshold": LO, "requires": ("storage",), "storage_from": "/mnt/nfs/hs", "shape": "onset",
              "onset_fraction": 0.75},
}
AGING = ("weibull2", "weibull4", "onset")
TARGETS = [0.95, 0.975, 0.99]  # correctness levels both methods are held to (the target is 95%)
TARGET_ALPHAS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3]
MULTIPLES = [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25, 32, 40, 50, 64]


def space() -> SearchSpace:
    return SearchSpace(LO, HI, tuple(Change.parse(c) for c in CHANGES))


def model(shape: str, seed: int) -> SimModel:
    rng = random.Random(f"mtth:{shape}:{seed}")
    mtth = math.exp(rng.uniform(math.log(20 * 60), math.log(6 * 3600)))
    sh = SHAPES[shape]
    kind = sh.get("shape", "exponential")
    rate, onset = 1.0 / mtth, 0.0
    if kind == "onset":  # the drawn MTTH is the mean of onset + the time to hang after it
        onset = sh["onset_fraction"] * mtth
        rate = 1.0 / (mtth - onset)
    hz = Hazard(rate, sh["threshold"], tuple(sh["requires"]), sh.get("rate_at_threshold", 1.0),
                sh.get("storage_from"), kind, sh.get("k", 1.0), onset)
    return SimModel(space(), hz, seed=seed, overhead=OVERHEAD)


def mean_tth(m: SimModel) -> float:
    """The baseline's mean time to hang on one server (the drawn MTTH)."""
    return 1.0 / m.hazard.rate + m.hazard.onset


def SimExec(m: SimModel, stream: str, reuse: bool = True, parallel: int = 1) -> DirectSim:
    """Virtual-time trials straight from the hazard (no journal): one stream of draws per seed."""
    return DirectSim(m, stream, reuse, parallel, overhead=OVERHEAD)


FIELD_BUDGET = 300  # the field protocol's wall-clock budget, in baseline MTTHs (no answer within it: wrong)


def field_uptimes(m: SimModel, n: int = 3) -> list[float]:
    """Uptimes at which n fresh baseline servers hung: the field's reports (\"after ~6 h\")."""
    rng = random.Random(f"field:{m.seed}")
    servers = SimServers(m.hazard, m.space, reuse=False)
    return [servers.trial(0, m.space.baseline, math.inf, rng)[2] for _ in range(n)]


def field_settings(m: SimModel, settings: Settings) -> Settings:
    """The field protocol: the baseline's hangs come from the field (3 uptimes), trials are capped at half
    the MTTH and every trial gets a fresh server (the Ray executor, or --fresh-server with --max-trial).
    Today's --prior takes K/DUR only; the uptimes themselves go in with the hazard models that use them."""
    ups = field_uptimes(m)
    d = {**settings.to_dict(), "max_trial": 0.5 * mean_tth(m), "budget": FIELD_BUDGET * mean_tth(m),
         "split_runs": True}
    if settings.hazard_model == "exponential":
        d.update(prior=(len(ups), sum(ups)), prior_uptimes=None)
    else:
        d.update(prior=None, prior_uptimes=tuple(ups))
    return Settings.from_dict(d)


def run_bisect(shape: str, seed: int, settings: Settings, parallel: int = 1, field: bool = False) -> dict[str, Any]:
    m = model(shape, seed)
    if field:
        settings = field_settings(m, settings)
    s = Search(m.space, settings, SimExec(m, "bisect", reuse=not field, parallel=parallel))
    r = s.run_all()
    truth = m.hazard.truth(m.space)
    return {"correct": r.config == truth, "hours": r.trial_time / 3600, "steps": r.steps,
            "mtth_h": mean_tth(m) / 3600, "found": r.config.key() if r.config else r.status,
            "model": s.model.name}


class FixedSearch(Search):
    """Fixed-duration bisection: one trial of D per test, no posterior, no re-checks, no confirmation."""

    def __init__(self, sp: SearchSpace, settings: Settings, ex: SimExec, multiple: float, sessions: bool) -> None:
        super().__init__(sp, settings, ex)
        self.multiple = multiple
        self.sessions = sessions
        self.D = 0.0

    def run(self, cfg: Config, cap: float) -> Outcome:
        out = self.ex.run(cfg, cap)
        self.steps += 1
        charged = OVERHEAD + (cap if self.sessions and self.D and cap == self.D else out.exposure)
        self.trial_time += charged
        ev = self.evidence.setdefault(cfg, [0, 0.0])
        ev[0] += out.hung
        ev[1] += out.exposure
        return out

    def test_changes(self, changes: frozenset[Change], alpha: float | None = None) -> bool:
        if changes in self._dd_cache:
            return self._dd_cache[changes]
        out = self.run(Config(self.space.hi, changes), self.D)
        self._dd_cache[changes] = out.hung
        return out.hung

    def minimize(self, changes: list[Change]) -> list[Change]:
        return self.ddmin(changes)

    def concurrency(self, changes: frozenset[Change]) -> tuple[int, float]:
        vals = self.space.values
        lo, hi = 0, len(vals) - 1  # vals[hi] hangs
        while lo < hi:
            mid = (lo + hi) // 2
            if self.run(Config(vals[mid], changes), self.D).hung:
                hi = mid
            else:
                lo = mid + 1
        return vals[hi], 1.0

    def confirm(self, cfg: Config) -> None:
        return None

    def probe(self) -> bool:
        return False  # the textbook method: ddmin, then binary search

    def baseline(self):  # type: ignore[no-untyped-def]
        post = super().baseline()
        self.D = self.multiple * post.mean_time_to_hang
        return post


def run_fixed(shape: str, seed: int, multiple: float, sessions: bool, field: bool = False) -> dict[str, Any]:
    m = model(shape, seed)
    prior = None
    if field:  # the same field reports fix the MTTH estimate: D = m x their mean
        ups = field_uptimes(m)
        prior = (len(ups), sum(ups))
    s = FixedSearch(m.space, Settings(max_trial=None, min_trial=0.0, hazard_model="exponential", prior=prior),
                    SimExec(m, "fixed", reuse=False), multiple, sessions)
    r = s.run_all()
    truth = m.hazard.truth(m.space)
    return {"correct": r.config == truth, "hours": s.trial_time / 3600}


def run_grid(shape: str, seed: int, multiple: float) -> dict[str, Any]:
    m = model(shape, seed)
    sp = m.space
    ex = SimExec(m, "grid", reuse=False)
    hours = 0.0
    hangs, expo = 0, 0.0
    while hangs < 3:  # the same baseline reproduction
        out = ex.run(sp.baseline, math.inf)
        hangs += out.hung
        expo += out.exposure
        hours += out.trial_time / 3600
    D = multiple * expo / hangs
    found: Config | None = None
    for r in range(len(sp.changes) + 1):
        for sub in itertools.combinations(sp.changes, r):
            # a subset with storage is tried with every storage path, plainest first
            variants = ([frozenset(c for c in sub if c.name != "storage") | {Change("storage", p)}
                         for p in sp.storage_rungs] if any(c.name == "storage" for c in sub) else [frozenset(sub)])
            for changes, c in itertools.product(variants, sp.values):
                cfg = Config(c, changes)
                out = ex.run(cfg, D)
                hours += out.trial_time / 3600
                if out.hung and found is None:
                    found = cfg
    return {"correct": found == m.hazard.truth(sp), "hours": hours}


def _job(args: tuple[str, str, int, Any]) -> tuple[str, str, int, Any, dict[str, Any]]:
    kind, shape, seed, param = args
    if kind == "bisect":
        param = dict(param)
        res = run_bisect(shape, seed, Settings(**{k: v for k, v in param.items() if k not in ("parallel", "field")}),
                         int(param.get("parallel", 1)), bool(param.get("field")))
    elif kind == "fixed":
        res = run_fixed(shape, seed, param[0], param[1], bool(param[2]) if len(param) > 2 else False)
    else:
        res = run_grid(shape, seed, param)
    return kind, shape, seed, param, res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed+seeds-1 (held-out checks)")
    ap.add_argument("--shape", action="append", choices=sorted(SHAPES))
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--no-grid", action="store_true", help="skip the (slow) grid search")
    ap.add_argument("--json", default=None, help="write all figures to this file")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--hazard-model", default="auto", choices=["auto", "exponential", "aging"],
                    help="bisect's hazard model (the method under test)")
    ap.add_argument("--baseline-model", default="exponential", choices=["exponential", "auto", "aging", "none"],
                    help="on the aging shapes, first search with this model (today's: exponential); none: skip")
    ap.add_argument("--bisect-only", action="store_true", help="only bisect's rows (no fixed/grid/tuned alpha)")
    ap.add_argument("--parallel", type=int, default=1, help="bisect's trials side by side (--parallel N)")
    ap.add_argument("--protocol", default="default", choices=["default", "field"],
                    help="field: 3 baseline hangs given as field uptimes, trials capped at MTTH/2, a fresh server "
                         "for every trial (no grid)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="a bisect Settings field, e.g. rate_ratio=0.5")
    args = ap.parse_args(argv)
    shapes = args.shape or list(SHAPES)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    settings: dict[str, Any] = {"alpha": args.alpha, "hazard_model": args.hazard_model}
    if args.parallel > 1:
        settings["parallel"] = args.parallel
    field = args.protocol == "field"
    if field:
        settings["field"] = True
        args.no_grid = True
    for kv in args.set or []:
        k, _, v = kv.partition("=")
        settings[k] = float(v)
    t0 = time.time()
    pool = multiprocessing.Pool(args.jobs) if args.jobs > 1 else None
    mapper = pool.imap_unordered if pool else map

    def collect(jobs: list[tuple[str, str, int, Any]]) -> dict[tuple[str, str, Any], list[dict[str, Any]]]:
        out: dict[tuple[str, str, Any], list[dict[str, Any]]] = {}
        for kind, shape, _seed, param, res in mapper(_job, jobs):
            key = (kind, shape, json.dumps(param))
            out.setdefault(key, []).append(res)
        return out

    before = {**settings, "hazard_model": args.baseline_model}
    # today's method is searched again on the aging shapes (and, in the field protocol, on every shape:
    # there its --prior cannot carry the uptimes)
    again = [sh for sh in shapes if (sh in AGING or field) and args.baseline_model != "none"]
    ours = collect([("bisect", sh, s, settings) for sh in shapes for s in seeds]
                   + [("bisect", sh, s, before) for sh in again for s in seeds])
    summary: dict[str, Any] = {"seeds": args.seeds, "alpha": args.alpha, "hazard_model": args.hazard_model,
                               "first_seed": args.first_seed, "protocol": args.protocol, "parallel": args.parallel,
                               "shapes": {}}
    print(f"{'shape':<10} {'method':<22} {'correct':>8} {'trial-h mean':>13} {'median':>8}  ratio to bisect")
    for sh in shapes:
        row: dict[str, Any] = {}
        if sh in again:
            old = ours[("bisect", sh, json.dumps(before))]
            a0 = sum(r["correct"] for r in old) / len(old)
            h0 = sum(r["hours"] for r in old) / len(old)
            m0 = sorted(r["hours"] for r in old)[len(old) // 2]
            row[f"bisect ({args.baseline_model})"] = {"correct": a0, "hours": h0, "median_hours": m0,
                                                      "wrong": [r["found"] for r in old if not r["correct"]]}
            print(f"{sh:<10} {'bisect (' + args.baseline_model + ')':<22} {a0:>8.1%} {h0:>13.1f} {m0:>8.1f}")
        mine = ours[("bisect", sh, json.dumps(settings))]
        acc = sum(r["correct"] for r in mine) / len(mine)
        hours = sum(r["hours"] for r in mine) / len(mine)
        med = sorted(r["hours"] for r in mine)[len(mine) // 2]
        aging_share = sum(r["model"] == "aging" for r in mine) / len(mine)
        row["bisect"] = {"correct": acc, "hours": hours, "median_hours": med, "model_aging_share": aging_share,
                         "wrong": [r["found"] for r in mine if not r["correct"]]}
        label = f"bisect ({args.hazard_model})"
        print(f"{sh:<10} {label:<22} {acc:>8.1%} {hours:>13.1f} {med:>8.1f}  (aging model in {aging_share:.0%})")
        if args.bisect_only:
            summary["shapes"][sh] = row
            continue
        def fp(mult: float, sessions: bool) -> tuple[Any, ...]:
            return (mult, sessions, True) if field else (mult, sessions)

        comps = [("fixed", fp(mult, False)) for mult in MULTIPLES] + [("fixed", fp(mult, True)) for mult in MULTIPLES]
        if not args.no_grid:
            comps += [("grid", mult) for mult in MULTIPLES]
        res = collect([(k, sh, s, p) for k, p in comps for s in seeds])
        for label, kind, sessions in (("fixed (stop at hang)", "fixed", False), ("fixed (sessions)", "fixed", True),
                                      ("grid", "grid", None)):
            if kind == "grid" and args.no_grid:
                continue
            chosen, best = None, None
            for mult in MULTIPLES:
                p = fp(mult, sessions) if kind == "fixed" else mult
                rs = res[(kind, sh, json.dumps(p))]
                a = sum(r["correct"] for r in rs) / len(rs)
                cand = (mult, a, sum(r["hours"] for r in rs) / len(rs), sorted(r["hours"] for r in rs)[len(rs) // 2])
                if best is None or a > best[1]:
                    best = cand
                if a >= acc:
                    chosen = cand
                    break
            reached = chosen is not None
            mult, a, h, md = chosen if reached else best  # type: ignore[misc]
            note = "" if reached else f"  (never reaches {acc:.1%} for m <= {MULTIPLES[-1]}: its best)"
            print(f"{sh:<10} {label + f' m={mult:g}':<22} {a:>8.1%} {h:>13.1f} {md:>8.1f}  {h / hours:.1f}x{note}")
            row[label] = {"multiple": mult, "correct": a, "hours": h, "median_hours": md, "ratio": h / hours,
                          "reaches_bisect_correctness": reached}
        # Both methods held to the same correctness, for several levels: each at its cheapest setting
        # that reaches the level on these seeds (bisect: alpha on TARGET_ALPHAS; fixed: m on MULTIPLES).
        tuned = collect([("bisect", sh, s, {**settings, "alpha": a}) for a in TARGET_ALPHAS if a != args.alpha
                         for s in seeds])
        tuned[("bisect", sh, json.dumps({**settings, "alpha": args.alpha}))] = mine

        def cheapest(rows: list[tuple[Any, list[dict[str, Any]]]], level: float) -> tuple[Any, float, float] | None:
            ok = [(p, sum(r["correct"] for r in rs) / len(rs), sum(r["hours"] for r in rs) / len(rs))
                  for p, rs in rows if sum(r["correct"] for r in rs) / len(rs) >= level]
            return min(ok, key=lambda x: x[2]) if ok else None

        row["at_level"] = {}
        for level in TARGETS:
            b = cheapest([(a, tuned[("bisect", sh, json.dumps({**settings, "alpha": a}))]) for a in TARGET_ALPHAS],
                         level)
            f = cheapest([(m, res[("fixed", sh, json.dumps(fp(m, False)))]) for m in MULTIPLES], level)
            if b is None or f is None:
                print(f"{sh:<10} at {level:.1%}: " + ("bisect never gets there" if b is None else
                                                      f"bisect alpha={b[0]:g} {b[2]:.1f} h; fixed never gets there"))
                continue
            print(f"{sh:<10} at {level:.1%}: bisect alpha={b[0]:g} ({b[1]:.1%}) {b[2]:.1f} h; fixed (stop at hang) "
                  f"m={f[0]:g} ({f[1]:.1%}) {f[2]:.1f} h: {f[2] / b[2]:.1f}x")
            row["at_level"][f"{level:.3f}"] = {"bisect": {"alpha": b[0], "correct": b[1], "hours": b[2]},
                                               "fixed_stop_at_hang": {"multiple": f[0], "correct": f[1], "hours": f[2]},
                                               "ratio": f[2] / b[2]}
        summary["shapes"][sh] = row
    summary["seconds"] = round(time.time() - t0, 1)
    summary["machine"] = f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}".strip()
    print(f"\n{args.seeds} seeds per shape, alpha {args.alpha}, {summary['seconds']} s on {summary['machine']}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    if pool:
        pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
