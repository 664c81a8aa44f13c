"""The scenario: one validated object that carries every setting of a run.

The CLI parses flags into a :class:`Scenario`; ``serve``, ``stress``, ``watch``,
``capture`` and ``bisect`` only read it. ``scenario.json`` in a run directory is
``Scenario.to_dict()``; ``Scenario.from_dict`` reads it back (bisect trials and
``--resume`` rely on that round trip). Secrets (the API key) are never part of
the serialised form.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro.errors import UsageError

SCHEMA_VERSION = 1

WORKLOADS = ("hidden-states", "chat", "speculators")  # plus "mixed:RATIO"
CONSUME_POLICIES = ("delete", "keep")  # plus "move:DIR"
ON_STALL = ("capture", "exit", "restart")


@dataclass
class ServerSettings:
    """How to launch a vLLM server (``repro serve`` and every command that launches one)."""

    model: str | None = None  # None: the tiny model, built on first use
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    extract: bool = True  # hidden-state extraction on
    storage: str = "/dev/shm/repro-hs"  # the connector's shared_storage_path
    layers: list[int] | None = None  # None: speculators' default clipped to the model
    connector: str = "auto"  # auto | stock | cpu | fp8 | cpu-fp8 | mooncake | module:Class (repro.server.connectors)
    async_scheduling: bool | None = None  # None: vLLM's default
    chunked_prefill: bool | None = None
    prefix_caching: bool | None = None
    max_num_seqs: int | None = None
    max_model_len: int | None = None  # None: 256 for the tiny model, vLLM's default otherwise
    dtype: str | None = None  # vLLM --dtype; None: float32 for the tiny model, vLLM's choice otherwise
    inject: str | None = None  # fault-injection spec, see repro.vllm_plugins.faultspec
    inject_control: str | None = None  # a file the fault plugin re-reads at run time
    extra_args: list[str] = field(default_factory=list)  # passed to vllm serve after ours
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the server
    vllm_cmd: list[str] | None = None  # how to run vLLM's CLI; None: find it
    startup_timeout: float = 600.0
    log_stats_interval: float = 1.0  # VLLM_LOG_STATS_INTERVAL


@dataclass
class LoadSettings:
    """The load ``repro stress`` sends."""

    workload: str = "hidden-states"  # hidden-states | chat | mixed:RATIO (share of hidden-states)
    concurrency: int = 32
    rate: float | None = None  # Poisson arrivals per second; None: closed loop at `concurrency`
    duration: float | None = None  # seconds; None with requests None: until interrupted
    requests: int | None = None
    request_timeout: float = 120.0
    retries: int = 3
    seed: int = 0
    prompt_len: tuple[int, int] = (128, 2048)
    prompts_file: str | None = None
    max_tokens: int = 16  # chat workload; hidden-states always uses 1
    consume: str = "delete"  # delete | move:DIR | keep
    keep_budget: int = 1 << 30  # bytes kept at most with consume=keep
    keep_bad_budget: int = 256 * 1000 * 1000  # failing hidden-state files kept in RUN_DIR/bad-files up to this
    model_name: str | None = None  # None: from /v1/models
    vocab_size: int | None = None  # synthetic token ids are drawn below this; None: from the model's config
    check_threads: int | None = None  # threads verifying hidden-state files; None: concurrency/16 in 4..16
    max_consecutive_errors: int | None = None  # --workload speculators gives up after this many; None: concurrency

    def validate(self) -> None:
        if self.concurrency < 1:
            raise UsageError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.rate is not None and self.rate <= 0:
            raise UsageError(f"--rate must be positive, got {self.rate}")
        if self.requests is not None and self.requests < 1:
            raise UsageError(f"--requests must be at least 1, got {self.requests}")
        if self.request_timeout <= 0:
            raise UsageError(f"--request-timeout must be positive, got {self.request_timeout}")
        if self.retries < 0:
            raise UsageError(f"--retries must not be negative, got {self.retries}")
        lo, hi = self.prompt_len
        if lo < 1 or hi < lo:
            raise UsageError(f"--prompt-len must be N or LO-HI with 1 <= LO <= HI, got {lo}-{hi}")
        wl = self.workload
        if wl not in WORKLOADS and not wl.startswith("mixed:"):
            raise UsageError(f"unknown --workload {wl!r}: use hidden-states, chat, speculators or mixed:RATIO")
        if wl.startswith("mixed:"):
            try:
                ratio = float(wl.split(":", 1)[1])
            except ValueError:
                raise UsageError(f"--workload {wl!r}: RATIO must be a number between 0 and 1") from None
            if not 0.0 <= ratio <= 1.0:
                raise UsageError(f"--workload {wl!r}: RATIO must be between 0 and 1")
        if self.max_consecutive_errors is not None:
            if wl != "speculators":
                raise UsageError("--max-consecutive-errors is speculators' give-up rule: it goes with --workload speculators")
            if self.max_consecutive_errors < 1:
                raise UsageError(f"--max-consecutive-errors must be at least 1, got {self.max_consecutive_errors}")
        if self.consume not in CONSUME_POLICIES and not self.consume.startswith("move:"):
            raise UsageError(f"unknown --consume {self.consume!r}: use delete, keep or move:DIR")


@dataclass
class DetectSettings:
    """The stall detector (shared by stress and watch)."""

    poll_interval: float = 1.0  # seconds between /metrics polls
    window: float = 180.0  # how long a bad state must persist before it is a stall
    min_bad_evaluations: int = 3  # K consecutive bad evaluations, on top of the window
    slow_floor: float | None = None  # tokens/s below which progress counts as `slow`
    startup_grace: float = 60.0
    probe: bool = True  # when the server reports nothing running but the client waits: send a 1-token probe
    probe_timeout: float = 10.0  # seconds a probe may take before it counts as no answer
    abort_window: float = 10.0  # abort-storm: seconds of client endings looked at
    abort_share: float = 0.5  # abort-storm: at least this share of the requests that ended were aborted
    abort_min: int = 10  # abort-storm: and at least this many aborts in the window

    def validate(self) -> None:
        if self.poll_interval <= 0:
            raise UsageError("--poll-interval must be positive")
        if self.window <= 0:
            raise UsageError("--window must be positive")


@dataclass
class CaptureSettings:
    """What to take when a stall is detected."""

    samples: int = 3
    interval: float = 2.0
    native: bool = True
    pyspy_timeout: float = 10.0
    size_budget: int = 20 * 1000 * 1000
    redact_hosts: bool = False
    env_allow: tuple[str, ...] = ()  # more server environment variables to show (names or wildcards; REPRO_ENV_ALLOW)
    secret_scan: bool = True  # detect-secrets' detectors on every text and in the last check (off: benchmarks only)
    pyspy: str | None = None  # py-spy executable; None: beside this Python, else PATH
    docker_pyspy: str = "auto"  # "nsenter" (host py-spy inside a container's namespaces), "exec" (the image's py-spy),
    #                             "host" (host py-spy, host pids, no native frames), auto: nsenter as root, else exec
    stacks_budget: float = 15.0  # seconds for all stack samples of all processes (grows with samples*interval)
    collect_env: bool = True  # run `python -m vllm.collect_env` with the server's Python
    collect_env_timeout: float = 60.0  # runs in parallel with sampling; killed after this
    collect_env_cache: str | None = ""  # "": ~/.cache/repro/collect-env (24 h); None: never cache; else a dir
    log_tail_bytes: int = 4 * 1000 * 1000  # of the server log, before the size budget trims further


@dataclass
class Scenario:
    """Everything about one run; the CLI builds it, the core reads it."""

    server: ServerSettings = field(default_factory=ServerSettings)
    load: LoadSettings = field(default_factory=LoadSettings)
    detect: DetectSettings = field(default_factory=DetectSettings)
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    url: str | None = None  # attach to this server instead of launching one
    log_file: str | None = None  # server log to follow when attaching
    docker: str | None = None  # container name when the server runs in Docker
    storage_path: str | None = None  # hidden-state storage to watch when attaching
    storage_horizon: float = 1800.0  # storage-exhaustion warns when the store is projected full within this
    orphan_grace: float = 30.0  # an unclaimed file younger than this may still be claimed (or written late)
    on_stall: str = "capture"
    out_dir: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never serialised
    invocation: list[str] | None = None  # the repro command line that started the run, secrets masked (the reproducer)
    server_cmdline: list[str] | None = None  # --server-command: an attached server's command line repro cannot read

    def validate(self) -> None:
        self.load.validate()
        self.detect.validate()
        if self.storage_horizon <= 0:
            raise UsageError("--storage-horizon must be positive")
        if self.orphan_grace < 0:
            raise UsageError("--orphan-grace must not be negative")
        if self.on_stall not in ON_STALL:
            raise UsageError(f"unknown --on-stall {self.on_stall!r}: use capture, exit or restart")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("api_key", None)
        d["schema_version"] = SCHEMA_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scenario":
        d = dict(d)
        d.pop("schema_version", None)
        d.pop("api_key", None)
        for info in ("server_command", "server_command_source", "server_log"):
            d.pop(info, None)  # informational (stress writes what it knows of the server beside the settings)
        d.pop("connector", None)  # informational too: the connector resolved from server.connector
        load = dict(d.pop("load", {}))
        if "prompt_len" in load:
            load["prompt_len"] = tuple(load["prompt_len"])
        return cls(
            server=ServerSettings(**d.pop("server", {})),
            load=LoadSettings(**load),
            detect=DetectSettings(**d.pop("detect", {})),
            capture=CaptureSettings(**d.pop("capture", {})),
            **d,
        )

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: Path) -> "Scenario":
        return cls.from_dict(json.loads(Path(path).read_text()))


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file (scenario or search space), with a one-line error on failure."""
    try:
        import tomllib  # type: ignore[import-not-found]
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from None
