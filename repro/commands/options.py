"""Click options shared by every command that launches a vLLM server (serve, stress, watch, trial)."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

import click

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

INJECT_HELP = (
    "Fault to inject inside vLLM (needs repro installed beside vLLM): "
    "stall-after=T | stall-after=Nsteps (block the scheduler for good, T s after the first request); "
    "stall-for=T[,after=A] (block it for T s once: slow, not dead); "
    "write-stall[=A] (hang inside the hidden-state file write); "
    "gpu-hang[=T] (a GPU kernel that never finishes on the engine's stream: EngineCore blocks in a CUDA wait); "
    "raise-after=T|Nsteps (raise inside the scheduler: EngineCore dies with a traceback); "
    "hazard=R,min_running=N[,seed=S] (permanent stall at random, R per hour while >= N requests run). "
    "Join several with ';'. Times: 30, 30s, 5m, 1h."
)


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


def server_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the `repro serve` options to a command; `server_settings(kwargs)` turns them into settings."""
    opts = [
        click.option("--model", default=None, metavar="DIR|ID",
                     help="Model to serve. Default: the tiny random Llama, built on first use into ~/.cache/repro."),
        click.option("--host", default="127.0.0.1", show_default=True, help="Address vLLM listens on."),
        click.option("--port", type=int, default=8000, show_default=True, help="Port vLLM listens on."),
        click.option("--served-model-name", default=None, help="Name the model is served under."),
        click.option("--extract/--no-extract", default=True, show_default=True,
                     help="Hidden-state extraction (extract_hidden_states + hidden-states KV connector)."),
        click.option("--storage", default="/dev/shm/repro-hs", show_default=True, metavar="DIR",
                     help="Where vLLM writes hidden-state files (the connector's shared_storage_path)."),
        click.option("--layers", callback=_parse_layers, default=None, metavar="IDS",
                     help="1-based layer ids to extract, e.g. 2,16,29,32. Default: speculators' "
                          "[2, L//2, L-3, L] clipped to the model."),
        click.option("--connector", callback=_check_connector, default="auto", show_default=True,
                     metavar="NAME|module:Class",
                     help="Hidden-states connector: stock (vLLM's ExampleHiddenStatesConnector, GPU), cpu (repro's, "
                          "synchronous: the vLLM 0.20.2 behaviour), fp8 (hs-connectors' FP8HiddenStatesConnector: "
                          "float8 files with per-token scales, GPU), cpu-fp8 (that format written on CPU), mooncake "
                          "(hs-connectors: a handle into a Mooncake store, no file), or module:Class of any KV "
                          "connector importable beside vLLM. auto: cpu when no GPU is visible, else stock. When "
                          "attaching (--url) it says what the server runs, so that its files are checked for that "
                          "format."),
        click.option("--async-scheduling/--no-async-scheduling", default=None, help="Force vLLM's async scheduling."),
        click.option("--chunked-prefill/--no-chunked-prefill", default=None, help="Force chunked prefill."),
        click.option("--prefix-caching/--no-prefix-caching", default=None, help="Force prefix caching."),
        click.option("--max-num-seqs", type=click.IntRange(min=1), default=None, help="vLLM --max-num-seqs."),
        click.option("--max-model-len", type=click.IntRange(min=16), default=None, help="vLLM --max-model-len."),
        click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32"]), default=None,
                     help="vLLM --dtype (the dtype of the model and of the hidden-state files). Default: float32 "
                          "for the tiny model, vLLM's own choice (the model's dtype) otherwise."),
        click.option("--inject", callback=_check_inject, default=None, metavar="SPEC", help=INJECT_HELP),
        click.option("--inject-control", default=None, metavar="FILE",
                     help="A file the fault plugin re-reads at run time: write a SPEC to arm, 'release' to unblock."),
        click.option("--vllm-cmd", default=None, metavar="CMD",
                     help="How to run vLLM's CLI up to the model, e.g. 'python -m vllm.entrypoints.cli.main serve'. "
                          "Default: the `vllm serve` next to this Python, else on PATH."),
        click.option("--startup-timeout", type=float, default=600.0, show_default=True,
                     help="Seconds to wait for the server to answer."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


SERVER_KEYS = ("model", "host", "port", "served_model_name", "extract", "storage", "layers", "connector",
               "async_scheduling", "chunked_prefill", "prefix_caching", "max_num_seqs", "max_model_len",
               "dtype", "inject", "inject_control", "vllm_cmd", "startup_timeout")


def server_settings(kwargs: dict[str, Any], extra_args: tuple[str, ...] = ()) -> ServerSettings:
    """Pop the server options out of a command's kwargs into ServerSettings."""
    values = {k: kwargs.pop(k) for k in SERVER_KEYS if k in kwargs}
    vcmd = values.pop("vllm_cmd", None)
    s = ServerSettings(**values, extra_args=list(extra_args))
    if vcmd:
        s.vllm_cmd = shlex.split(vcmd)
    return s


def passthrough(f: Callable[..., Any]) -> Callable[..., Any]:
    """Collect vLLM arguments given after `--`."""
    return click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- VLLM_ARGS...]")(f)


ENV_ALLOW_HELP = ("Also show this variable of the server's environment in the bundle (repeatable; wildcards such as "
                  "'MYAPP_*'; or REPRO_ENV_ALLOW=NAME,NAME). Off the allow-list, a value is withheld (name kept); "
                  "names that say secret are always withheld.")


def env_allow_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--env-allow NAME` (repeatable): more server environment variables a bundle shows (CaptureSettings.env_allow)."""
    return click.option("--env-allow", "env_allow", multiple=True, metavar="NAME", help=ENV_ALLOW_HELP)(f)
