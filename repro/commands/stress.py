"""`repro stress`: sustained concurrent load with a stall detector that does not trust health checks.

Only parses flags into a Scenario and calls :func:`repro.load.runner.run_stress`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from repro import invocation
from repro.commands.options import passthrough, server_options, server_settings
from repro.executors.options import ExecutorSettings, executor_settings, fleet_options, ray_options
from repro.errors import EXIT_TARGET, UsageError
from repro.options import options, values
from repro.rundir import new_run_dir
from repro.scenario import CaptureSettings, DetectSettings, LoadSettings, Scenario
from repro.units import parse_duration

LOAD_OPTIONS = ("requests", "request_timeout", "retries", "seed", "prompt_len", "prompts_file", "vocab_size",
                "check_threads", "client_procs", "max_tokens", "consume", "keep_budget", "keep_bad_budget")
SCENARIO_OPTIONS = ("api_key", "storage_horizon", "orphan_grace", "on_stall")
CAPTURE_OPTIONS = ("samples", "interval", "size_budget", "env_allow")
DETECT_OPTIONS = ("poll_interval", "window", "min_bad_evaluations", "slow_floor", "startup_grace")


def _duration(hours: float | None, minutes: float | None, duration: str | None) -> float | None:
    given = [x for x in (hours, minutes, duration) if x is not None]
    if len(given) > 1:
        raise UsageError("give only one of --hours, --minutes, --duration")
    if hours is not None:
        secs = hours * 3600.0
    elif minutes is not None:
        secs = minutes * 60.0
    elif duration is not None:
        secs = parse_duration(duration, "--duration")
    else:
        return None
    if secs <= 0:
        raise UsageError("the duration must be positive")
    return secs


@click.command("stress", context_settings={"show_default": True})
@server_options
@click.option("--url", default=None, metavar="URL", help="Attach to a running server instead of launching one.")
@options(Scenario, ("api_key",))
@options(LoadSettings, ("model_name",))
@click.option("--log-file", default=None, metavar="FILE", help="Server log to follow when attaching (--url).")
@click.option("--docker", default=None, metavar="NAME", help="Follow the log of this container (docker logs -f).")
@click.option("--server-command", default=None, metavar="CMD",
              help="The attached server's command line, for the report, when repro cannot read it (a server on "
                   "another machine); a local server's is read from /proc.")
@click.option("--storage-path", default=None, metavar="DIR",
              help="Hidden-state storage of an attached server: orphan census while the run goes, and capture.")
@options(Scenario, ("storage_horizon", "orphan_grace"))
@options(LoadSettings, ("workload", "max_consecutive_errors", "concurrency", "rate"))
@click.option("--hours", type=float, default=None, help="Run this many hours.")
@click.option("--minutes", type=float, default=None, help="Run this many minutes.")
@click.option("--duration", default=None, metavar="DUR", help="Run this long: 90s, 30m, 6h, 1h30m.")
@options(LoadSettings, LOAD_OPTIONS)
@options(DetectSettings, DETECT_OPTIONS)
@options(Scenario, ("on_stall",))
@options(CaptureSettings, CAPTURE_OPTIONS)
@click.option("-o", "--out", default=None, metavar="DIR", help="Run directory (default ./repro-runs/stress-<time>).")
@fleet_options
@ray_options
@passthrough
def command(vllm_args: tuple[str, ...], **kw: Any) -> int:
    """Drive sustained concurrent load at a vLLM server and detect the moment it stalls.

    Launches a server with the `repro serve` options (or attaches with --url), sends the load,
    polls /metrics and follows the log, and classifies what it sees: engine-stall, queue-stall,
    client-stall, server-dead, slow. /health is never trusted. Writes scenario.json,
    requests.jsonl, timeline.csv, events.jsonl and summary.json into the run directory, and at the
    end report.html + timeline.png (`repro report`); the last line points at the report.

    \b
    Exit codes: 0 no stall, 1 stall, 2 usage error, 3 target unreachable or failed to start,
    4 hidden-state files failed their check or could not be verified (no stall),
    130 interrupted (partial results and summary.json written).

    \b
      repro stress --concurrency 32 --hours 6
      repro stress --url http://127.0.0.1:8000 --duration 30m --window 120
      repro stress --inject stall-after=30 --window 20 --duration 5m
    """
    server = server_settings(kw, vllm_args)
    if kw["on_stall"] == "restart":
        raise UsageError("--on-stall restart is not supported by `repro stress`: it stops at the first stall "
                         "(use capture or exit; `repro watch` restarts)")
    url = kw["url"]
    if url:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--url {url!r}: must start with http:// or https://")
    elif kw["log_file"] or kw["docker"]:
        pass  # allowed: following another log while repro launches its own server is odd but harmless
    load = LoadSettings(**values(LoadSettings, kw), duration=_duration(kw["hours"], kw["minutes"], kw["duration"]))
    detect = DetectSettings(**values(DetectSettings, kw, DETECT_OPTIONS))
    capture = CaptureSettings(**values(CaptureSettings, kw, CAPTURE_OPTIONS))
    run = values(Scenario, kw, SCENARIO_OPTIONS)
    scn = Scenario(server=server, load=load, detect=detect, capture=capture, url=url.rstrip("/") if url else None,
                   log_file=kw["log_file"], docker=kw["docker"], storage_path=kw["storage_path"], out_dir=kw["out"],
                   **run, invocation=invocation.command_line([run["api_key"] or ""]),
                   server_cmdline=shlex.split(kw["server_command"]) if kw["server_command"] else None)
    scn.validate()
    if scn.docker:  # no such container, stopped, no engine, no permission: one line, exit 3, nothing started
        from repro.capture import docker as docker_mod

        docker_mod.running(scn.docker)
    if scn.storage_path:
        from repro.storage.census import StorageCensus

        StorageCensus.open(scn.storage_path)  # missing or unreadable -> one line, exit 2, before anything starts
    if load.prompts_file:
        from repro.load.prompts import load_prompts_file

        prompts = load_prompts_file(load.prompts_file)
        if load.workload == "speculators":
            from repro.load.speculators import check_prompts

            check_prompts(prompts, load.prompts_file)  # before a run directory exists
    ex = executor_settings(kw)
    if ex.kind == "ray":
        return _fleet(scn, kw, ex)
    from repro.load.runner import run_stress

    run_dir = new_run_dir("stress", kw["out"])
    scn.out_dir = str(run_dir)
    res = run_stress(scn, Path(run_dir))
    err = sys.stderr
    if res.exit_code == EXIT_TARGET:
        click.echo(f"error: {res.error}", err=True)
        _report_line(run_dir, res.summary)
        return res.exit_code
    if res.error:
        click.echo(f"error: {res.error}", err=True)
    s = res.summary
    fid = s.get("fidelity", {})
    click.echo(f"fidelity mean {fid.get('mean')} p5 {fid.get('p5')} (server running+waiting / concurrency)", file=err)
    handles = res.files.get("handles") or 0
    if handles:
        click.echo(f"handles {handles} (bad {res.files.get('bad_handles', 0)}): the connector returns store handles, "
                   "not files", file=err)
    if res.counts.get("rejected"):
        click.echo(f"rejected: {res.counts['rejected']} request(s) refused by the server as invalid (HTTP 400), "
                   f"e.g. {(res.counts.get('rejected_detail') or '')[:200]}", file=err)
    bd = fid.get("breakdown") or {}
    if bd.get("samples"):
        click.echo(f"where the load was (means): client in flight {bd['client_in_flight']:.1f} of {bd['concurrency']}, "
                   f"engine running {bd['engine_running']:.1f}, waiting {bd['engine_waiting']:.1f}, inside the API "
                   f"server {bd['api_server']:.1f}", file=err)
    if fid.get("advice"):
        click.echo(f"warning: {fid['advice']}", file=err)
    if res.stall is not None:
        st = s.get("stall") or {}
        click.echo(f"stall: {st.get('class')} since {st.get('since_s')} s, detected at {st.get('detected_s')} s "
                   f"({'; '.join(res.stall.evidence.get('reasons', []))})", file=err)
    storm = s.get("abort_storm")
    if storm:
        click.echo(f"warning: abort-storm for {storm.get('seconds')} s ({storm.get('episodes')} episode(s), peak abort "
                   f"share {storm.get('peak_abort_share')}, goodput down to {storm.get('min_goodput_per_s')} req/s): "
                   f"client timeouts throw the engine's work away; not a stall", file=err)
    sto = s.get("storage")
    if sto and sto.get("applies") is False:
        click.echo(f"storage: no census ({sto['why']})", file=err)
    elif sto:
        click.echo(f"storage {sto['path']}: {sto.get('orphan_files')} orphaned files ({(sto.get('orphan_bytes') or 0) / 1e6:.1f} MB) "
                   f"no response claimed, {sto.get('claimed_files')} claimed and still present; "
                   f"warnings: {', '.join(sto.get('warnings') or {}) or 'none'}", file=err)
    if s.get("storage_cause"):
        click.echo(f"storage cause: {s['storage_cause']['kind']}: {s['storage_cause']['line'][:200]}", file=err)
    _report_line(run_dir, s)
    return res.exit_code


def _report_line(run_dir: Path, summary: dict[str, Any]) -> None:
    """The report (never costs the run: a failure is one line) and the one-line summary pointing at it."""
    from repro.load.display import final_line
    from repro.report import report_after_run

    rep = report_after_run(Path(run_dir), lambda msg: click.echo(msg, err=True))
    click.echo(final_line(summary, rep.html if rep is not None else None, run_dir), err=True)


def _fleet(scn: Scenario, kw: dict[str, Any], ex: ExecutorSettings) -> int:
    """--executor ray: N replicas on a Ray cluster (repro.executors.fleet)."""
    if scn.url:
        raise UsageError("--executor ray launches a server per replica: drop --url")
    from repro.executors.cluster import connect
    from repro.executors.fleet import run_fleet

    session = connect(ex.address, ex.ask, ex.replicas)
    try:
        if session.note:
            click.echo(f"ray: {session.note}", err=True)
        run_dir = new_run_dir("stress", kw["out"])
        scn.out_dir = str(run_dir)
        click.echo(f"fleet of {ex.replicas} on {ex.address or 'a local Ray instance'} "
                   f"({len(session.nodes)} node(s)), each asks {ex.ask.describe()}; run directory {run_dir}", err=True)
        res = run_fleet(scn, Path(run_dir), session, ex.replicas, ex.ask, keep_going=ex.keep_going,
                        artifact_dir=ex.artifact_dir)
    finally:
        session.close()
    s = res.summary
    for r in s["replicas"]:
        click.echo(f"replica {r['replica']} on {r['node']} (pid {r['pid']}): {r['outcome']}, "
                   f"{r['exposure_s']:.0f} s exposure" + (f", stall {r['stall_class']}" if r["stall_class"] else "")
                   + (f", evidence {r['dir']}" if r["dir"] else "") + (f" ({r['error']})" if r["error"] else ""),
                   err=True)
    click.echo(f"fleet: {s['hangs']} hang(s) in {s['exposure_s']:.0f} s of exposure; summary {res.path}", err=True)
    return res.exit_code
