"""`repro serve`: launch a real vLLM server with hidden-state extraction and keep it until stopped."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from repro.commands.options import INJECT_GRAMMAR, passthrough, server_options, server_settings
from repro.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TARGET, ServerStartError
from repro.rundir import new_run_dir
from repro.server import tinymodel
from repro.server.launcher import VllmServer, log_tail


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


@click.command("serve", epilog=INJECT_GRAMMAR)
@server_options
@click.option("-o", "--out", default=None, metavar="DIR", help="Run directory for the server log (default ./repro-runs/serve-<time>).")
@click.option("--build-tiny-model", "build_tiny", default=None, metavar="DIR",
              help="Only build the tiny random Llama into DIR and exit.")
@passthrough
def command(out: str | None, build_tiny: str | None, vllm_args: tuple[str, ...], **kwargs: Any) -> int:
    """Launch a vLLM server in its own process group, with hidden-state extraction.

    Waits until the server answers, prints its URL, the pids of APIServer, EngineCore and
    Worker and where the log is, then keeps it running. Ctrl-C or SIGTERM stops the whole
    process group (no orphans). Arguments after `--` go to `vllm serve` unchanged:

        repro serve --port 8000 --inject stall-after=60 -- --max-num-seqs 32
    """
    if build_tiny:
        click.echo(tinymodel.build(Path(build_tiny)))
        return EXIT_OK
    settings = server_settings(kwargs, vllm_args)
    run_dir = new_run_dir("serve", out)
    server = VllmServer(settings, run_dir)
    old = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    err = click.get_text_stream("stderr")
    try:
        try:
            server.start()
            click.echo(f"starting vLLM (log: {server.log_path})", err=True)
            click.echo("  " + " ".join(server.command), err=True)
            c = server.connector
            if c is not None:
                click.echo(f"  hidden states: --connector {c.name}: {c.kv_connector}"
                           + (f" from {c.module_path}" if c.module_path else " (vLLM's own)"), err=True)
            last = [0.0]

            def waiting(elapsed: float) -> None:
                if elapsed - last[0] >= 10:
                    last[0] = elapsed
                    click.echo(f"  still starting after {elapsed:.0f} s ...", err=True)

            server.wait_ready(on_wait=waiting)
            click.echo(f"vLLM ready at {server.url} (model {server.model_name}) after "
                       f"{server.ready_at - server.started_at:.1f} s")  # type: ignore[operator]
            for p in server.processes():
                click.echo(f"  {p.label:<14} pid {p.pid}")
            click.echo(f"  log: {server.log_path}")
            click.echo("Ctrl-C or SIGTERM stops the server and all its processes.")
            sys.stdout.flush()
            while server.alive():
                time.sleep(0.5)
            click.echo(f"error: vLLM exited with code {server.proc.returncode}; last lines of {server.log_path}:\n"  # type: ignore[union-attr]
                       + log_tail(server.log_path), err=True)
            return EXIT_TARGET
        except (KeyboardInterrupt, _Stop) as exc:
            click.echo("stopping vLLM (process group) ...", err=True)
            server.stop()
            click.echo("stopped.", err=True)
            return EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_OK
        except ServerStartError:
            raise
    finally:
        if server.alive():
            server.stop()
        for s, h in old.items():
            signal.signal(s, h)
        _ = err
