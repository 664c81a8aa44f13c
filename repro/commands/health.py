"""`repro health`: repro's own view of the engine, for a container HEALTHCHECK (not vLLM's /health)."""

from __future__ import annotations

from pathlib import Path

import click

from repro.errors import EXIT_OK, EXIT_STALL, UsageError
from repro.units import parse_duration
from repro.watch.health import DEFAULT_MAX_AGE, STATE_FILE_ENV, check


@click.command("health")
@click.argument("where", required=False, metavar="[STATE_FILE|WATCH_RUN_DIR]")
@click.option("--state-file", envvar=STATE_FILE_ENV, show_envvar=True, default=None, metavar="FILE",
              help="The state file `repro watch --state-file` writes (default: state.json of WATCH_RUN_DIR).")
@click.option("--max-age", default=f"{DEFAULT_MAX_AGE:.0f}s", show_default=True, metavar="DUR",
              help="A state older than this means the watchdog itself is stuck: unhealthy.")
def command(where: str | None, state_file: str | None, max_age: str) -> int:
    """Exit 0 when `repro watch` sees its engine serving, 1 when it does not; one line says why.

    vLLM's /health answers 200 while the engine is stalled; this asks the watchdog instead.
    Healthy: watch is evaluating a server that makes progress (state healthy, or suspect
    until --window is up). Unhealthy: stalled, capturing, restarting, starting, waiting for
    storage, gave up, or a state file watch stopped refreshing. Dockerfile.gb10's HEALTHCHECK
    runs it (the image sets REPRO_WATCH_STATE_FILE for watch and health alike):

    \b
      docker inspect --format '{{.State.Health.Status}}' vllm-watch
      repro health repro-runs/watch-20261201-120000
    """
    path = Path(where) if where else (Path(state_file) if state_file else None)
    if path is None:
        raise UsageError(f"say which watch to ask: a state file or watch run directory, --state-file, or "
                         f"{STATE_FILE_ENV}")
    if path.is_dir():
        path = path / "state.json"
    verdict = check(path, parse_duration(max_age, "--max-age"))
    click.echo(("healthy: " if verdict.healthy else "unhealthy: ") + verdict.line)
    return EXIT_OK if verdict.healthy else EXIT_STALL
