"""`repro bisect`: shrink a rare hang to a small, fast reproducer, with statistics for rare events.

Only parses flags into a search space, settings and a base scenario, then calls
:mod:`repro.bisect.driver`. See :mod:`repro.bisect.search` for the method.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click

from repro.bisect import driver, journal, output
from repro.bisect.search import Decision, Settings, parse_prior
from repro.bisect.space import DEFAULT_PLAIN_STORAGE, Change, SearchSpace, parse_range, space_from_toml
from repro.commands.options import passthrough, server_options, server_settings
from repro.executors.factory import backend_for
from repro.executors.options import executor_settings, ray_options
from repro.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TARGET, UsageError
from repro.options import option, options, values
from repro.rundir import new_run_dir
from repro.scenario import DetectSettings, LoadSettings, Scenario
from repro.units import format_duration, parse_duration

TOGGLE_OPTIONS = {"extract": "extract=N", "storage": "storage=PATH", "layers": "extract=N",
                  "async_scheduling": "async-scheduling=on|off", "chunked_prefill": "chunked-prefill=on|off",
                  "prefix_caching": "prefix-caching=on|off", "max_num_seqs": "max-num-seqs=N"}
# the Settings fields given as flags; --prior's text fills prior or prior_uptimes (search.parse_prior)
SEARCH_OPTIONS = ("alpha", "baseline_hangs", "prior", "hazard_model", "reuse_when_aging", "rate_ratio",
                  "confirm_hangs", "probe_minimum", "min_trial")
LOAD_OPTIONS = ("prompt_len", "max_tokens", "seed")  # the load of every trial (its concurrency is searched)
SERVER_START = 60.0  # a vLLM start on the tiny model takes 35-60 s: part of every real trial


def parse_budget(text: str | None) -> float | None:
    """--budget: hours as a number ("48", "0.5") or a duration ("90m", "2h")."""
    if text is None:
        return None
    t = str(text).strip()
    try:
        hours = float(t)
    except ValueError:
        return parse_duration(t, "--budget")
    return hours * 3600.0  # its range: Settings.validate()


def build_space(space_file: str | None, concurrency: str | None, step: int | None, changes: tuple[str, ...],
                plain_storage: str | None, max_trial: str | None, budget: str | None) -> SearchSpace:
    if space_file:
        sp = space_from_toml(space_file)
        if concurrency is not None:
            sp.lo, sp.hi = parse_range(concurrency)
        if changes:
            sp.changes = tuple(Change.parse(c) for c in changes)
            sp.storage_ladder = ()
        if plain_storage:
            sp.plain_storage = plain_storage
        if step:
            sp.step = step
        sp.__post_init__()
    else:
        if concurrency is None:
            raise UsageError("give the search space: --concurrency LO-HI (and --change ...) or --space FILE.toml")
        lo, hi = parse_range(concurrency)
        sp = SearchSpace(lo, hi, tuple(Change.parse(c) for c in changes),
                         plain_storage=plain_storage or DEFAULT_PLAIN_STORAGE, step=step or 1)
    if max_trial is not None:
        sp.max_trial = parse_duration(max_trial, "--max-trial")  # its range: Settings.validate()
    if budget is not None:
        sp.budget = parse_budget(budget)
    return sp


def _say(text: str) -> None:
    click.echo(text, err=True)
    sys.stderr.flush()


def _report(d: Decision) -> None:
    tag = {"warning": "WARNING", "stop": "STOP", "result": "RESULT"}.get(d.phase, d.phase)
    click.echo(f"[{tag}] {d.text}")
    sys.stdout.flush()


@click.command("bisect", context_settings={"show_default": True})
@server_options
@click.option("--space", "space_file", default=None, metavar="FILE.toml",
              help="Search space from a TOML file (concurrency, changes, plain_storage, max_trial, budget).")
@click.option("--concurrency", "-c", default=None, metavar="LO-HI", help="Concurrency range; the baseline is HI.")
@click.option("--step", type=click.IntRange(min=1), default=None, help="Step between tested concurrencies.")
@click.option("--change", "changes", multiple=True, metavar="TOGGLE[=VALUE]",
              help="A difference from a plain server/client present in the baseline (repeat): extract=N, "
                   "storage=PATH (or a ladder storage=P1,...,PN, plainest first), async-scheduling=on|off, chunked-prefill=on|off, prefix-caching=on|off, "
                   "max-num-seqs=N, timeout=S, retries=N, consume=keep|move:DIR, arg='--flag value'.")
@click.option("--plain-storage", default=None, metavar="DIR",
              help=f"Storage of the plain configuration (default {DEFAULT_PLAIN_STORAGE}).")
@click.option("--max-trial", default=None, metavar="DUR", help="Longest single trial (e.g. 2h).")
@click.option("--budget", default=None, metavar="HOURS", help="Total wall-clock budget (hours, or 90m / 2h).")
@options(Settings, SEARCH_OPTIONS)
@click.option("--parallel", type=click.IntRange(min=1), default=1,
              help="Trials side by side, each with its own server, port and CPU/GPU slice.")
@click.option("--simulate", default=None, metavar="MODEL.toml",
              help="Replace trials by draws from a known hazard in virtual time (see repro.bisect.sim).")
@click.option("--resume", default=None, metavar="DIR", help="Continue the search journaled in DIR.")
@click.option("--log", "log_dir", default=None, metavar="DIR", help="Print the journal of DIR and exit.")
@click.option("--undo", "undo_dir", default=None, metavar="DIR",
              help="Void the last step of DIR (e.g. a false alarm), then exit; --resume re-plans.")
@click.option("-o", "--out", default=None, metavar="DIR", help="Run directory (default ./repro-runs/bisect-<time>).")
@options(LoadSettings, LOAD_OPTIONS, defaults={"prompt_len": (128, 1024)})
@options(DetectSettings, ("window", "poll_interval", "min_bad_evaluations", "startup_grace"))
@option(Scenario, "on_stall", type=click.Choice(["capture", "exit"]),
        help="On a stall in a trial: capture a bundle (evidence) or just end the trial.")
@click.option("--heartbeat", type=float, default=5.0, help="Seconds between journal heartbeats of a running trial.")
@click.option("--fresh-server", is_flag=True, default=False,
              help="Start a new vLLM server for every trial. By default a server that stayed clean serves the "
                   "slot's next trial when its settings are the same (e.g. another concurrency), saving start-up.")
@ray_options
@passthrough
def command(vllm_args: tuple[str, ...], **kw: Any) -> int:
    """Shrink a rare, stochastic hang to the smallest configuration that still hangs.

    \b
    1. reproduce the baseline (top of --concurrency, every --change) --baseline-hangs times;
    2. probe the smallest configuration (--probe-minimum); 3. ddmin over the changes towards a
    plain server (then the plainest storage path of a ladder); 4. Bayesian bisection over
    concurrency; 5. confirm the result with --confirm-hangs hangs.
    Clean trials are sized from the Gamma-Poisson posterior so that the overall chance of a
    non-minimal answer stays within --alpha. Every fact goes to an fsync'ed journal in the run
    directory: --resume DIR continues after a crash without losing or double-counting exposure.

    \b
    Writes minimal.json, repro_min.sh, repro_min.py and ISSUE_bisect.md into the run directory.

    \b
      repro bisect --concurrency 1-32 --change extract=4 --change storage=/mnt/nfs/hs \\
                   --change timeout=120 --change retries=3 --max-trial 2h --budget 48
      repro bisect --simulate model.toml --out runs/sim
      repro bisect --resume repro-runs/bisect-20261128-120000
    """
    if kw["log_dir"]:
        for line in journal.describe(journal.Journal(Path(kw["log_dir"]) / journal.JOURNAL_NAME)):
            click.echo(line)
        if not (Path(kw["log_dir"]) / journal.JOURNAL_NAME).exists():
            raise UsageError(f"--log {kw['log_dir']}: no bisect journal there")
        return EXIT_OK
    if kw["undo_dir"]:
        click.echo(driver.undo_last(Path(kw["undo_dir"])))
        return EXIT_OK

    ctx = click.get_current_context()
    for param, toggle in TOGGLE_OPTIONS.items():
        if ctx.get_parameter_source(param) == click.core.ParameterSource.COMMANDLINE:
            raise UsageError(f"--{param.replace('_', '-')} is a search dimension in repro bisect: "
                             f"give it as --change {toggle} (the baseline has every change, the search removes them)")
    detect = DetectSettings(**values(DetectSettings, kw, ("window", "poll_interval", "min_bad_evaluations",
                                                          "startup_grace")))
    detect.validate()
    ex = executor_settings(kw)
    resume = kw["resume"]
    given_space = kw["space_file"] or kw["concurrency"] is not None or kw["changes"] or kw["simulate"]
    sim_model = None
    if kw["simulate"]:
        from repro.bisect.sim import load_model

        sim_model = load_model(kw["simulate"])
    spec = None
    if given_space:
        if sim_model is not None and not (kw["space_file"] or kw["concurrency"] is not None or kw["changes"]):
            space = sim_model.space
            if kw["max_trial"]:
                space.max_trial = parse_duration(kw["max_trial"], "--max-trial")
            if kw["budget"]:
                space.budget = parse_budget(kw["budget"])
        else:
            space = build_space(kw["space_file"], kw["concurrency"], kw["step"], kw["changes"], kw["plain_storage"],
                                kw["max_trial"], kw["budget"])
        prior = parse_prior(kw.pop("prior"))
        search = values(Settings, kw, SEARCH_OPTIONS)  # the others
        if kw["fresh_server"] and search["reuse_when_aging"]:
            raise UsageError("--fresh-server and --reuse-server contradict each other: give one")
        settings = Settings(**search, **prior,
                            # a verdict's exposure is cut into runs of restarted servers (side by side, or
                            # capped runs that cannot continue one server): only the memoryless model allows that
                            split_runs=bool(kw["parallel"] > 1 or (space.max_trial is not None and (
                                kw["fresh_server"] or ex.kind == "ray"))),
                            max_trial=space.max_trial, budget=space.budget,
                            uptime_resolution=detect.poll_interval)
        settings.validate()
        min_trial = settings.min_trial
        if sim_model is not None and sim_model.space.identity() != space.identity():
            raise UsageError(f"--simulate {kw['simulate']}: the model's space differs from the one given; "
                             "put the space in the model file only")
        mode = "simulate" if sim_model is not None else "real"
        base = None if sim_model is not None else _base_scenario(kw, vllm_args, detect)
        one_trial = (sim_model.overhead if sim_model is not None else SERVER_START + detect.startup_grace) + min_trial
        if space.budget is not None and space.budget < one_trial:
            raise UsageError(f"--budget {format_duration(space.budget)} is too small for one trial "
                             f"(at least {format_duration(one_trial)}: start-up + warm-up + --min-trial)")
        extra: dict[str, Any] = {"simulate": str(Path(kw["simulate"]).resolve()) if kw["simulate"] else None,
                                 "parallel": kw["parallel"], "heartbeat": kw["heartbeat"],
                                 "reuse_server": not kw["fresh_server"]}
        spec = driver.SearchSpec(space, settings, mode, extra, base)
    elif not resume:
        raise UsageError("give the search space: --concurrency LO-HI (and --change ...), --space FILE.toml, "
                         "--simulate MODEL.toml, or --resume DIR")

    run_dir = Path(resume) if resume else new_run_dir("bisect", kw["out"])
    if resume and not run_dir.is_dir():
        raise UsageError(f"--resume {resume}: no such directory")
    jr, spec, recorded = driver.start_or_resume(run_dir, spec, bool(resume))
    if resume:
        total = journal.total_exposure(jr)
        _say(f"resuming {run_dir}: {len(recorded)} steps journaled, {format_duration(total)} of exposure "
             "(killed trials counted up to their last heartbeat)")
    parallel = int(spec.extra.get("parallel", kw["parallel"]) or 1)
    if resume and kw["parallel"] != 1:
        parallel = kw["parallel"]
    base_scn = _journaled_base(spec) if spec.mode != "simulate" else None
    backend = backend_for(spec, run_dir, ex, parallel, _say, base=base_scn, model=sim_model)

    _say(f"bisect run directory: {run_dir} (journal {jr.path})")
    s = spec.settings
    _say(f"space: concurrency {spec.space.lo}-{spec.space.hi}, changes: "
         f"{', '.join(str(c) for c in spec.space.changes) or 'none'}; alpha {s.alpha}, "
         + (f"prior {s.prior[0]} hangs in {format_duration(s.prior[1])}" if s.prior else
            f"baseline reproduced {s.baseline_hangs} times")
         + f", parallel {parallel}" + (f", budget {format_duration(s.budget)}" if s.budget else ""))

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        result = driver.run_search(jr, spec, recorded, backend, _report, _say)
    except KeyboardInterrupt:
        backend.stop_all()
        _say(f"interrupted: the journal is consistent; continue with  repro bisect --resume {run_dir}")
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, old)
        backend.close()  # servers or actors kept idle for reuse, the cluster connection
        jr.close()
    paths = output.write_outputs(run_dir, result, spec.space, spec.settings, base_scn, spec.mode)
    for name, p in paths.items():
        _say(f"wrote {p}")
    _say(f"{result.steps} steps, {result.trial_time / 3600:.2f} trial-hours, {result.wall / 3600:.2f} wall-hours")
    if result.hazard:
        click.echo(f"[model] {result.hazard.get('text')}")
    if spec.mode == "simulate":
        from repro.bisect.sim import load_model

        truth_model = sim_model or load_model(spec.extra["simulate"])
        truth = truth_model.hazard.truth(truth_model.space)
        got = result.config.describe() if result.config else f"none ({result.status})"
        verdict = "right" if result.config == truth else "WRONG"
        click.echo(f"[simulate] ground truth: {truth.describe()} ({truth_model.hazard.describe()}); "
                   f"answer: {got}: {verdict}")
    if result.status == "untestable":
        return EXIT_TARGET
    if result.status != "minimal":
        _say(f"the search stopped before a minimal configuration ({result.status}); evidence is in minimal.json; "
             f"raise --budget and continue with  repro bisect --resume {run_dir}")
    return EXIT_OK


def _journaled_base(spec: driver.SearchSpec) -> Scenario:
    """The base scenario of a real search (given now, or read back from the journal on --resume)."""
    if spec.base is None:
        raise UsageError("the journal of this real search holds no base scenario (extra.scenario): "
                         "it was not written by repro bisect; start a new search")
    return spec.base


def _base_scenario(kw: dict[str, Any], vllm_args: tuple[str, ...], detect: DetectSettings) -> Scenario:
    server = server_settings(kw, vllm_args)
    load = LoadSettings(**values(LoadSettings, kw, LOAD_OPTIONS))
    scn = Scenario(server=server, load=load, detect=detect, on_stall=kw["on_stall"])
    scn.validate()
    return scn
