"""`repro watch`: a production watchdog that captures the evidence of a stall before it restarts."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import click

from repro import invocation
from repro.commands.options import passthrough, server_options, server_settings
from repro.errors import EXIT_OK, UsageError
from repro.formats import WATCH_FORMAT, stamp
from repro.options import option, options, values
from repro.options import parse as parse_option
from repro.report import report_after_run
from repro.rundir import new_run_dir
from repro.scenario import CaptureSettings, DetectSettings, Scenario, ServerRecord
from repro.server.launcher import check_storage
from repro.units import parse_duration
from repro.watch.events import EventLog
from repro.watch.health import StateFile
from repro.watch.policy import PolicySettings
from repro.watch.promstats import WatchMetrics
from repro.watch.recovery import MinFree, RecoverySettings
from repro.watch.supervisor import Supervisor, WatchSettings, WatchStopped
from repro.watch.timeline import WatchTimeline
from repro.watch.servers import DockerTarget, ExternalTarget, ServeTarget, Target


CAPTURE_OPTIONS = ("samples", "interval", "collect_env", "env_allow")


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    return parse_duration(value, f"--{param.name.replace('_', '-')}")  # type: ignore[union-attr]


def _connector_record(settings: Any, known: bool) -> dict[str, Any]:
    """Which hidden-states connector the watched server runs (launched, or said with --connector), for bundles."""
    from repro.server.launcher import server_connector

    conn = server_connector(settings) if known else None
    if conn is None:
        return {"name": None, "note": "not launched by repro and no --connector given"}
    return conn.to_dict()


def _raise_stop(signum: int, frame: object) -> None:
    raise WatchStopped(signum)


def _say(msg: str) -> None:
    click.echo(f"{time.strftime('%H:%M:%S')} watch: {msg}", err=True)


@click.command("watch", context_settings={"show_default": True})
@click.option("--serve", is_flag=True, help="Launch vLLM (the `repro serve` options below) and own its process group.")
@click.option("--docker", "docker_name", default=None, metavar="NAME",
              help="Watch a container: follow `docker logs`, restart with `docker stop` + `docker start` "
                   "(or --restart-cmd). The server's URL is --url (default http://127.0.0.1:PORT).")
@click.option("--url", default=None, metavar="URL", help="The server to watch when repro did not launch it.")
@click.option("--pid", type=int, default=None, help="With --url: the server's root process (for stacks and liveness).")
@click.option("--restart-cmd", default=None, metavar="CMD",
              help="How to restart an attached server (`sh -c CMD`), e.g. 'docker compose restart vllm'.")
@click.option("--restart-timeout", default="5m", callback=_duration, help="How long the restart command may take.")
@click.option("--log-file", default=None, metavar="FILE", help="With --url/--docker: the server log to follow.")
@options(Scenario, ("api_key",))
@server_options
@options(DetectSettings, ("window", "min_bad_evaluations", "poll_interval", "startup_grace"))
@click.option("--probe/--no-probe", default=False,
              help="Send one tiny request every --probe-interval (outside any workload), so that an idle "
                   "server and a stuck one can be told apart.")
@click.option("--probe-interval", default="30s", callback=_duration, help="Seconds between probes.")
@options(DetectSettings, ("probe_timeout",))
@click.option("--capture/--no-capture", "do_capture", default=True, help="Capture a bundle before each restart.")
@click.option("--capture-budget", default="120s", callback=_duration,
              help="The restart waits this long for the capture at most (the capture never blocks it).")
@options(CaptureSettings, CAPTURE_OPTIONS)
@click.option("--max-restarts", type=click.IntRange(min=0), default=5,
              help="Give up (exit 1) when the server stalls again after this many restarts within an hour.")
@click.option("--backoff", default="10s", callback=_duration,
              help="Wait before the second restart; doubles for each further one.")
@click.option("--backoff-max", default="5m", callback=_duration, help="The longest back-off.")
@click.option("--reset-after", default="10m", callback=_duration,
              help="Healthy time after which the back-off starts from --backoff again.")
@options(WatchSettings, ("on_stall",))
@click.option("--hook-timeout", default="5m", callback=_duration, help="The hook is killed after this long.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve the watchdog's own Prometheus counters on this port.")
@click.option("--metrics-host", default="127.0.0.1", help="Address for --metrics-port.")
@click.option("-o", "--out", default=None, metavar="DIR",
              help="Run directory: events.jsonl, server logs, bundles (default ./repro-runs/watch-<time>).")
@click.option("--duration", default=None, callback=_duration, help="Stop watching after this long (exit 0).")
@click.option("--state-file", default=None, envvar="REPRO_WATCH_STATE_FILE", show_envvar=True, metavar="FILE",
              help="Keep repro's view of the engine here for `repro health` (a container HEALTHCHECK); default "
                   "state.json in the run directory.")
@option(Scenario, "orphan_grace", default=300.0, dest="storage_grace",
        help="With --storage: a file older than this that is still there counts as unclaimed, an orphan (watch "
             "sends no load, so it cannot know which files a client was given).")
@options(Scenario, ("storage_horizon",))
@click.option("--on-storage", default=None, metavar="CMD",
              help="Hook run on a new storage warning (REPRO_STORAGE_WARNING, _MESSAGE, _PATH in its environment).")
@click.option("--reap-orphans-older-than", "reap_older_than", default=None, callback=_duration, metavar="DUR",
              help="With --storage: delete hidden-state files (and their .lock) older than this; never outside the "
                   "store, never a symlink; each deletion is an event. Off by default.")
@click.option("--reap-dry-run", is_flag=True, default=False, help="List what --reap-orphans-older-than would delete.")
@click.option("--restart-min-free", default="5%", metavar="SIZE|PCT",
              help="After a death the server's log blames on the hidden-state store (ENOSPC), restart only once "
                   "the store's filesystem has this much free (e.g. 2GB, or 5% of its size) -- and at least "
                   "--restart-runway of the write rate measured before the death (known with --storage), capped at "
                   "half the filesystem. A read-only or unwritable store must be writable again.")
@click.option("--restart-runway", default="10m", callback=_duration,
              help="After a storage death: the free space must last this long at the measured write rate.")
@click.option("--storage-wait-max", default="10m", callback=_duration,
              help="After a storage death: when the store has not enough space again within this, stop (exit 1) "
                   "with one line saying why instead of restarting into a full store.")
@passthrough
@click.pass_context
def command(ctx: click.Context, serve: bool, docker_name: str | None, url: str | None, pid: int | None,
            restart_cmd: str | None, restart_timeout: float, log_file: str | None, api_key: str | None,
            probe: bool, probe_interval: float, do_capture: bool, capture_budget: float,
            max_restarts: int, backoff: float,
            backoff_max: float, reset_after: float, on_stall: str | None, hook_timeout: float,
            metrics_port: int | None, metrics_host: str, out: str | None, duration: float | None,
            state_file: str | None,
            on_storage: str | None, reap_older_than: float | None,
            reap_dry_run: bool, restart_min_free: str, restart_runway: float, storage_wait_max: float, vllm_args: tuple[str, ...], **kwargs: Any) -> int:
    """Keep a vLLM server alive; before every restart, capture the bundle that lets upstream fix the stall.

    \b
    repro watch --serve [serve options] [-- VLLM_ARGS]   repro launches vLLM and owns its process group
    repro watch --docker NAME [--url URL]               a container (docker stop/start, or --restart-cmd)
    repro watch --url URL [--pid PID] --restart-cmd CMD  anything else (systemd, compose, ...)

    It never sends load of its own unless --probe is given. A stall is what the stress detector
    calls one (running requests with flat token counters, a silent log after a 0.0 tokens/s
    line, an unanswered probe, a dead server) lasting --window and --min-bad evaluations.
    Then: capture (at most --capture-budget), stop by process group or container (never by
    name), confirm the port (and GPU memory) are free, back off, start, wait until the model
    answers. A death the log blames on the hidden-state store (ENOSPC, read-only, I/O error) is
    restarted only once the store has space again (--restart-min-free, --restart-runway), else
    watch stops after --storage-wait-max saying why. Every decision goes to events.jsonl.

    Exit 1 after giving up (--max-restarts in an hour, or no space within
    --storage-wait-max), 3 when the target cannot be reached or restarted, 0 after --duration
    or SIGTERM. At the end: report.html + timeline.png in the run directory (`repro report`).
    """
    modes = [m for m, on in (("--serve", serve), ("--docker", bool(docker_name)), ("--url", bool(url)))
             if on]
    if serve and len(modes) > 1:
        raise UsageError(f"--serve launches its own server: it cannot be combined with {modes[1]}")
    if not modes:
        raise UsageError("say what to watch: --serve, --docker NAME, or --url URL --restart-cmd CMD")
    capture_kw = values(CaptureSettings, kwargs, CAPTURE_OPTIONS)  # capture settings, not server ones
    storage_grace = parse_option(Scenario, "orphan_grace", kwargs.pop("storage_grace"))
    storage_horizon = parse_option(Scenario, "storage_horizon", kwargs.pop("storage_horizon"))
    detect = DetectSettings(**values(DetectSettings, kwargs, ("window", "min_bad_evaluations", "poll_interval",
                                                              "startup_grace", "probe_timeout")))
    explicit = {name for name in kwargs if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    settings = server_settings(kwargs, vllm_args)
    if not serve:
        launch_only = sorted(n for n in explicit if n not in ("port", "storage", "connector"))
        if vllm_args or launch_only:
            what = "arguments after --" if vllm_args else "--" + launch_only[0].replace("_", "-")
            raise UsageError(f"{what} only apply with --serve (repro launches the server)")
    if pid is not None and not url:
        raise UsageError("--pid goes with --url (the server to watch)")
    if url and not docker_name and not restart_cmd:
        raise UsageError("--url needs --restart-cmd: repro did not launch that server and must be told how to "
                         "restart it (e.g. --restart-cmd 'systemctl restart vllm')")
    if serve and restart_cmd:
        raise UsageError("--restart-cmd is for --url/--docker: with --serve repro restarts the server itself")
    if metrics_port is not None and metrics_port == settings.port and serve:
        raise UsageError(f"--metrics-port {metrics_port} is the server's --port")
    policy = PolicySettings(backoff_initial=backoff, backoff_max=max(backoff_max, backoff), reset_after=reset_after,
                            max_restarts=max_restarts)
    capture = CaptureSettings(**capture_kw) if do_capture else None
    ws = WatchSettings(detect=detect, policy=policy, capture=capture, capture_budget=capture_budget,
                       on_stall=on_stall, hook_timeout=hook_timeout, probe=probe, probe_interval=probe_interval,
                       duration=duration, startup_timeout=settings.startup_timeout, api_key=api_key,
                       recovery=RecoverySettings(min_free=MinFree.parse(restart_min_free), runway=restart_runway,
                                                 max_wait=storage_wait_max))

    ws.storage_grace, ws.storage_horizon, ws.on_storage = storage_grace, storage_horizon, on_storage
    ws.reap_older_than, ws.reap_dry_run = reap_older_than, reap_dry_run
    ws.validate()

    storage = settings.storage if "storage" in explicit else None
    if (reap_older_than is not None or on_storage or reap_dry_run) and storage is None:
        raise UsageError("--reap-orphans-older-than, --reap-dry-run and --on-storage need --storage PATH")
    if storage is not None:
        sp = Path(storage).expanduser()
        if serve:
            check_storage(storage)  # repro launches the server: create the store as the launcher would
        elif not sp.is_dir() or not os.access(sp, os.R_OK | os.X_OK):
            raise UsageError(f"--storage {storage}: not a readable directory")
    ws.storage_duty, ws.storage_path = storage is not None, storage
    target: Target
    target_url = url or f"http://127.0.0.1:{settings.port}"  # --docker without --url: this host, --port
    if serve:
        target = ServeTarget(settings, None)
    elif docker_name:
        target = DockerTarget(docker_name, target_url, restart_cmd, restart_timeout, log_file, storage, api_key)
    else:
        target = ExternalTarget(target_url, restart_cmd or "", pid, restart_timeout, log_file, storage, api_key)
    target.check()  # bad input fails here, before a run directory or anything else exists
    run_dir = new_run_dir("watch", out)
    if isinstance(target, ServeTarget):
        target.run_dir = run_dir
        scn = Scenario(server=settings, detect=detect, capture=capture or CaptureSettings(), on_stall="restart",
                       out_dir=str(run_dir))
    elif docker_name:
        scn = Scenario(detect=detect, capture=capture or CaptureSettings(), url=target_url, docker=docker_name,
                       log_file=log_file, storage_path=storage, on_stall="restart", out_dir=str(run_dir))
    else:
        scn = Scenario(detect=detect, capture=capture or CaptureSettings(), url=target_url, log_file=log_file,
                       storage_path=storage, on_stall="restart", out_dir=str(run_dir))
    argv = invocation.command_line([api_key or ""])  # secrets masked: watch.json and the bundles' reproducer
    scn.invocation = argv
    watch_json = {"mode": target.kind, "target_url": target.url, "watch": {k: v for k, v in dataclasses.asdict(ws).items()
                                                                        if k != "api_key"},
                  "restart_cmd": restart_cmd, "pid": pid, "docker": docker_name, "argv": argv}
    (run_dir / "watch.json").write_text(json.dumps(stamp(WATCH_FORMAT, watch_json), indent=2, default=str) + "\n")

    events = EventLog(run_dir / "events.jsonl")
    timeline = WatchTimeline(run_dir / "timeline.csv")
    metrics = WatchMetrics()
    metrics.state_file = StateFile(state_file or run_dir / "state.json", url=target.url)
    if metrics_port is not None:
        metrics.serve(metrics_port, metrics_host)
    record = ServerRecord(connector=_connector_record(settings, serve or "connector" in explicit))
    sup = Supervisor(target, ws, run_dir, events, metrics, say=_say, scenario=scn, server_record=record,
                     repro_command=argv, timeline=timeline)
    _say(f"watching {target.kind} {target.url}; run directory {run_dir} (events: {events.path})")
    old = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return sup.run(check=False)
    except WatchStopped as exc:
        _say(f"stopped by signal {exc.signum}")
        return EXIT_OK
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        metrics.close()
        events.close()
        timeline.close()
        rep = report_after_run(run_dir, _say)  # a failure to draw it is one line, never the exit code
        if rep is not None:
            _say(f"{rep.report.headline} -- report: {rep.html}")
