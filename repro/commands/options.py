"""Click options shared by every command that launches a vLLM server (serve, stress, watch, trial)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from repro.options import flag_names, options, values
from repro.scenario import ServerSettings
from repro.vllm_plugins import faultspec

INJECT_GRAMMAR = """\b
Fault injection (--inject SPEC; several joined with ';'; times like 30, 30s, 5m, 1h):
  stall-after=T            block the scheduler for good, T s after the engine first has work
  stall-after=Nsteps       the same after N scheduler steps with work
  stall-for=T[,after=A]    block the scheduler once for T s (a slow engine, not a dead one)
  write-stall[=A]          hang inside the hidden-state file write (hung shared storage)
  gpu-hang[=T|=Nsteps]     a GPU kernel that never finishes on the engine's CUDA stream, T s
                           after the first request: EngineCore blocks in a CUDA wait (CUDA only;
                           cannot be released: stop the server)
  raise-after=T|Nsteps     raise ReproInjectedEngineError inside the scheduler: EngineCore dies with a traceback
  hazard=R,min_running=N[,seed=S]
                           a permanent stall at random, R per hour while >= N requests run
The plugin is loaded by vLLM from repro's entry point: repro must be installed beside vLLM.
"""

def _parse_layers(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        layers = [int(x) for x in value.replace(" ", "").strip("[]").split(",") if x]
    except ValueError:
        raise click.BadParameter("use comma-separated 1-based layer ids, e.g. 2,16,29,32") from None
    if not layers:
        raise click.BadParameter("give at least one layer id")
    return layers


def _check_inject(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value:
        try:
            faultspec.parse(value)
        except faultspec.FaultSpecError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _check_connector(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from repro.errors import UsageError
    from repro.server import connectors

    try:
        connectors.resolve(value, gpu=False)
    except UsageError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1]) from None
    return value


SERVER_OPTIONS = tuple(flag_names(ServerSettings))  # every declared ServerSettings field, in declaration order
SERVER_CHECKS = {"layers": _parse_layers, "connector": _check_connector, "inject": _check_inject}


def server_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the `repro serve` options (ServerSettings' declarations) to a command; `server_settings(kwargs)` turns
    them into settings."""
    return options(ServerSettings, SERVER_OPTIONS, callbacks=SERVER_CHECKS)(f)


def server_settings(kwargs: dict[str, Any], extra_args: tuple[str, ...] = ()) -> ServerSettings:
    """Pop the server options out of a command's kwargs into validated ServerSettings."""
    s = ServerSettings(**values(ServerSettings, kwargs, SERVER_OPTIONS), extra_args=list(extra_args))
    s.validate()
    return s


def passthrough(f: Callable[..., Any]) -> Callable[..., Any]:
    """Collect vLLM arguments given after `--`."""
    return click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- VLLM_ARGS...]")(f)


def env_allow_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--env-allow NAME` (repeatable): more server environment variables a bundle shows (CaptureSettings.env_allow)."""
    from repro.options import option
    from repro.scenario import CaptureSettings

    return option(CaptureSettings, "env_allow")(f)
