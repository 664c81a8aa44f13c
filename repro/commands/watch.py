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
from repro.options import options, values
from repro.report import report_after_run
from repro.rundir import new_run_dir
from repro.scenario import CaptureSettings, DetectSettings, Scenario, ServerRecord
from repro.server.launcher import check_storage
from repro.units import parse_duration
from repro.watch.events import EventLog
from repro.watch.health import StateFile
from repro.watch.policy import PolicySettings
from repro.watch.promstats import WatchMetrics
from repro.watch.recovery import RecoverySettings
from repro.watch.supervisor import Supervisor, WatchSettings, WatchStopped
from repro.watch.timeline import WatchTimeline
from repro.watch.servers import DockerTarget, ExternalTarget, ServeTarget, Target


CAPTURE_OPTIONS = ("samples", "interval", "collect_env", "env_allow")
STORAGE_OPTIONS = ("storage_grace", "storage_horizon", "on_storage", "reap_older_than", "reap_dry_run")


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
@options(WatchSettings, ("probe", "probe_interval"))
@options(DetectSettings, ("probe_timeout",))
@click.option("--capture/--no-capture", "do_capture", default=True, help="Capture a bundle before each restart.")
@options(WatchSettings, ("capture_budget",))
@options(CaptureSettings, CAPTURE_OPTIONS)
@options(PolicySettings)
@options(WatchSettings, ("on_stall", "hook_timeout"))
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve the watchdog's own Prometheus counters on this port.")
@click.option("--metrics-host", default="127.0.0.1", help="Address for --metrics-port.")
@click.option("-o", "--out", default=None, metavar="DIR",
              help="Run directory: events.jsonl, server logs, bundles (default ./repro-runs/watch-<time>).")
@options(WatchSettings, ("duration",))
@click.option("--state-file", default=None, envvar="REPRO_WATCH_STATE_FILE", show_envvar=True, metavar="FILE",
              help="Keep repro's view of the engine here for `repro health` (a container HEALTHCHECK); default "
                   "state.json in the run directory.")
@options(WatchSettings, STORAGE_OPTIONS)
@options(RecoverySettings)
@passthrough
@click.pass_context
def command(ctx: click.Context, serve: bool, docker_name: str | None, url: str | None, pid: int | None,
            restart_cmd: str | None, restart_timeout: float, log_file: str | None, api_key: str | None,
            do_capture: bool, metrics_port: int | None, metrics_host: str, out: str | None, state_file: str | None,
            vllm_args: tuple[str, ...], **kwargs: Any) -> int:
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
    watch_kw = values(WatchSettings, kwargs)
    policy = PolicySettings.from_flags(**values(PolicySettings, kwargs))
    recovery = RecoverySettings(**values(RecoverySettings, kwargs))
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
    capture = CaptureSettings(**capture_kw) if do_capture else None
    ws = WatchSettings(detect=detect, policy=policy, capture=capture, **watch_kw,
                       startup_timeout=settings.startup_timeout, api_key=api_key, recovery=recovery)
    ws.validate()

    storage = settings.storage if "storage" in explicit else None
    if (ws.reap_older_than is not None or ws.on_storage or ws.reap_dry_run) and storage is None:
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
