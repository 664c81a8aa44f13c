"""`repro capture`: take the evidence of a stall now, from a running vLLM server."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

import click
import psutil

from repro import invocation
from repro.capture.request import CaptureRequest
from repro.options import options, values
from repro.errors import TargetError, UsageError
from repro.scenario import CaptureSettings, Scenario


def _resolve_pid(pid: int) -> int:
    from repro.server import procs

    if not psutil.pid_exists(pid):
        raise TargetError(f"--pid {pid}: no such process")
    try:
        root = procs.find_server_root(pid)
        found = [v for v in procs.find_vllm_processes(root) if procs.classify(v.title) != "other"]
    except psutil.NoSuchProcess:
        raise TargetError(f"--pid {pid}: the process exited") from None
    if not found:
        try:
            what = " ".join(psutil.Process(pid).cmdline())[:80]
        except psutil.Error:
            what = "?"
        raise UsageError(f"--pid {pid} ({what}) is not a vLLM server and has no vLLM child processes")
    return root


def _from_run_dir(run_dir: Path) -> dict[str, Any]:
    """What a stress/watch run directory tells us: scenario, log, storage, timeline, events, server pid."""
    if not run_dir.is_dir() or not (run_dir / "scenario.json").is_file():
        raise UsageError(f"{run_dir}: not a repro run directory (no scenario.json)")
    scen, record = Scenario.read_with_record(run_dir / "scenario.json")  # a foreign or future file: one line
    out: dict[str, Any] = {"scenario": scen, "server_record": record}
    out["url"] = scen.url or f"http://{scen.server.host}:{scen.server.port}"
    for name in ("server.log", "vllm.log"):
        if (run_dir / name).is_file():
            out["log_path"] = run_dir / name
            break
    if scen.log_file:
        out["log_path"] = Path(scen.log_file)
    for name in ("timeline.csv",):
        if (run_dir / name).is_file():
            out["timeline_csv"] = run_dir / name
    events = []
    for name in ("events.jsonl", "injected.jsonl"):
        p = run_dir / name
        if p.is_file():
            for line in p.read_text().splitlines():
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
    out["events"] = events
    if (run_dir / "detection.json").is_file():
        try:
            out["detection"] = json.loads((run_dir / "detection.json").read_text())
        except ValueError:
            pass
    for name in ("server.json", "server.pid"):
        p = run_dir / name
        if p.is_file():
            try:
                txt = p.read_text().strip()
                out["pid"] = int(json.loads(txt)["pid"]) if name.endswith(".json") else int(txt)
            except (ValueError, KeyError, TypeError):
                pass
    return out


def _next_bundle_dir(base: Path) -> Path:
    n = 1
    while (base / f"bundle-{n:03d}").exists() or (base / f"bundle-{n:03d}.tar.gz").exists():
        n += 1
    return base / f"bundle-{n:03d}"


@click.command("capture")
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@click.option("--url", default=None, help="The server's base URL (for /metrics before and after sampling).")
@click.option("--pid", type=int, default=None, help="Pid of the server's root process (any vLLM process works).")
@click.option("--docker", "docker", default=None, metavar="NAME", help="The container the server runs in.")
@options(CaptureSettings, ("samples", "interval"))
@click.option("-o", "--out", default=None, metavar="DIR",
              help="Bundle directory to create (the .tar.gz goes beside it). Default: RUN_DIR/bundle-NNN, "
                   "else ./repro-runs/capture-<time>/bundle-001.")
@click.option("--log-file", type=click.Path(path_type=Path), default=None, help="The server's log file.")
@click.option("--server-command", default=None, metavar="CMD",
              help="The attached server's command line, for the report, when repro cannot read it (a server on "
                   "another machine); a local server's is read from /proc.")
@click.option("--storage", default=None, metavar="DIR", help="The hidden-state storage directory to census.")
@options(Scenario, ("api_key",))
@options(CaptureSettings, ("pyspy", "native", "collect_env", "redact_hosts", "size_budget", "env_allow"))
def command(run_dir: Path | None, url: str | None, pid: int | None, docker: str | None, out: str | None,
            log_file: Path | None, storage: str | None, api_key: str | None, server_command: str | None,
            **kw: Any) -> int:
    """Take the evidence of a stall from a running vLLM server, into a bundle.

    \b
    Target: --pid PID (and --url URL for metrics), --docker NAME, --url URL alone
    (the pid listening on its port), or RUN_DIR of a stress run.

    \b
    The bundle holds py-spy stacks of every vLLM process (--samples dumps,
    --sample-interval s apart), per-thread CPU time, /metrics before and after, the log
    tail, command line and environment (secrets redacted), collect-env, storage
    state, a timeline plot, summary.md and manifest.json; the .tar.gz beside it
    fits a GitHub issue. Then: `repro analyze BUNDLE`, `repro issue BUNDLE`.

    \b
    Secrets: detect-secrets' detectors and repro's rules mask them in every file;
    the server's environment is shown by allow-list (VLLM_*, CUDA*, NCCL*,
    TORCH*, OMP_*, HF_* settings, PATH, LD_LIBRARY_PATH, proxies without
    credentials; more with --env-allow); every file is read back and checked
    again before the .tar.gz is packed, and not packed if one cannot be read.
    """
    from repro.capture.run import capture

    if not (run_dir or url or pid or docker):
        raise UsageError("say what to capture: --pid PID [--url URL], --docker NAME, --url URL, or a RUN_DIR")
    if pid is not None and docker:
        raise UsageError("give either --pid or --docker, not both")
    settings = CaptureSettings(**values(CaptureSettings, kw))
    settings.validate()
    info: dict[str, Any] = _from_run_dir(run_dir) if run_dir else {}
    url = url or info.get("url")
    if docker:
        from repro.capture import docker as docker_mod

        docker_mod.container_pid(docker)  # one clear line when docker is missing or the container is not running
    pid = pid or info.get("pid")
    root = _resolve_pid(pid) if pid is not None else None
    if root is None and not docker and url:
        from repro.server.procs import port_owner

        owner = port_owner(url)
        if owner is None:
            raise TargetError(f"no process on this machine listens on the port of {url}: pass --pid "
                              "(or --docker for a container)")
        root = _resolve_pid(owner)
    if out:
        out_dir = Path(out).expanduser()
        if (out_dir / "manifest.json").exists():
            raise UsageError(f"--out {out}: already holds a bundle")
    elif run_dir:
        out_dir = _next_bundle_dir(run_dir)
    else:
        out_dir = _next_bundle_dir(Path("repro-runs") / f"capture-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out_dir}: cannot create it ({exc.strerror})") from None
    req = CaptureRequest(out_dir=out_dir, settings=settings, root_pid=root, url=url, api_key=api_key,
                         log_path=log_file or info.get("log_path"), docker=docker,
                         storage_path=storage, scenario=info.get("scenario"),
                         server_record=info.get("server_record"), events=info.get("events") or [],
                         timeline_csv=info.get("timeline_csv"), detection=info.get("detection"), reason="manual",
                         repro_command=invocation.command_line([api_key or ""]),
                         server_command=shlex.split(server_command) if server_command else None)
    click.echo(f"capturing {settings.samples} samples, {settings.interval:g} s apart ...", err=True)
    b = capture(req)
    v = b.verdict or {}
    click.echo(f"bundle: {b.dir}")
    if b.tarball:
        click.echo(f"tarball: {b.tarball} ({os.path.getsize(b.tarball) / 1e6:.2f} MB)")
    elif b.not_packed:
        click.echo(f"not packed: {b.not_packed}", err=True)
    lc = b.manifest.get("last_check") or {}
    red = b.manifest.get("redaction") or {}
    click.echo(f"secrets: {red.get('total', 0)} masked while writing, {lc.get('total', 0)} more by the last check of "
               f"{lc.get('files', 0)} files" + (f"; {red['rules']['env_withheld']} environment values withheld "
                                                  "(--env-allow NAME to show one)"
                                                  if (red.get('rules') or {}).get('env_withheld') else ""))
    click.echo(f"verdict: {v.get('stuck_process') or '?'} {v.get('verdict')}"
               + (f" in {v['stuck_frame']}" if v.get("stuck_frame") else ""))
    click.echo(f"signature: {v.get('signature')}")
    click.echo(f"stacks took {b.manifest['stacks'].get('duration', 0):.1f} s; capture {b.manifest['duration']:.1f} s")
    if b.errors:
        click.echo(f"{len(b.errors)} collector(s) failed; see {b.dir / 'errors.txt'}:", err=True)
        for e in b.errors[:5]:
            click.echo(f"  {e}", err=True)
    return 0
