"""The scenario: one validated object that carries every setting of a run.

The CLI parses flags into a :class:`Scenario`; ``serve``, ``stress``, ``watch``,
``capture`` and ``bisect`` only read it, and it travels typed between them (the
capture request, bisect's journal, the Ray payload, watch). ``scenario.json`` is
written by :meth:`Scenario.write` and read by :meth:`Scenario.read` only (format
``repro.scenario``, see FORMATS.md): reading checks the schema and version and
names an unknown or missing key in a one-line error. What a run learned about its
server (command line, log, connector) goes beside the settings as a
:class:`ServerRecord`. Secrets (the API key) are never part of the serialised form.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from repro.errors import UsageError
from repro.formats import SCENARIO_FORMAT, read_json, stamp, version_of
from repro.options import Flag, check_ranges, setting


WORKLOADS = ("hidden-states", "chat", "speculators")  # plus "mixed:RATIO"
CONSUME_POLICIES = ("delete", "keep")  # plus "move:DIR"
ON_STALL = ("capture", "exit", "restart")


@dataclass
class ServerSettings:
    """How to launch a vLLM server (``repro serve`` and every command that launches one)."""

    model: str | None = setting(None, flag=Flag(  # None: the tiny model, built on first use
        "--model", "Model to serve. Default: the tiny random Llama, built on first use into ~/.cache/repro.",
        metavar="DIR|ID"))
    host: str = setting("127.0.0.1", flag=Flag("--host", "Address vLLM listens on."))
    port: int = setting(8000, flag=Flag("--port", "Port vLLM listens on.", type=int))
    served_model_name: str | None = setting(None, flag=Flag("--served-model-name", "Name the model is served under."))
    extract: bool = setting(True, flag=Flag(  # hidden-state extraction on
        "--extract", "Hidden-state extraction (extract_hidden_states + hidden-states KV connector).", parse="flag",
        off="--no-extract"))
    storage: str = setting("/dev/shm/repro-hs", flag=Flag(  # the connector's shared_storage_path
        "--storage", "Where vLLM writes hidden-state files (the connector's shared_storage_path).", metavar="DIR"))
    layers: list[int] | None = setting(None, flag=Flag(  # None: speculators' default clipped to the model
        "--layers", "1-based layer ids to extract, e.g. 2,16,29,32. Default: speculators' [2, L//2, L-3, L] "
        "clipped to the model.", metavar="IDS"))
    connector: str = setting("auto", flag=Flag(  # auto | stock | cpu | fp8 | cpu-fp8 | mooncake | module:Class
        "--connector", "Hidden-states connector: stock (vLLM's ExampleHiddenStatesConnector, GPU), cpu (repro's, "
        "synchronous: the vLLM 0.20.2 behaviour), fp8 (hs-connectors' FP8HiddenStatesConnector: float8 files with "
        "per-token scales, GPU), cpu-fp8 (that format written on CPU), mooncake (hs-connectors: a handle into a "
        "Mooncake store, no file), or module:Class of any KV connector importable beside vLLM. auto: cpu when no "
        "GPU is visible, else stock. When attaching (--url) it says what the server runs, so that its files are "
        "checked for that format.", metavar="NAME|module:Class"))
    async_scheduling: bool | None = setting(None, flag=Flag(  # None: vLLM's default
        "--async-scheduling", "Force vLLM's async scheduling.", parse="flag", off="--no-async-scheduling"))
    chunked_prefill: bool | None = setting(None, flag=Flag(
        "--chunked-prefill", "Force chunked prefill.", parse="flag", off="--no-chunked-prefill"))
    prefix_caching: bool | None = setting(None, flag=Flag(
        "--prefix-caching", "Force prefix caching.", parse="flag", off="--no-prefix-caching"))
    max_num_seqs: int | None = setting(None, flag=Flag("--max-num-seqs", "vLLM --max-num-seqs.", type=int,
                                                       minimum=1))
    max_model_len: int | None = setting(None, flag=Flag(  # None: 256 for the tiny model, vLLM's default otherwise
        "--max-model-len", "vLLM --max-model-len.", type=int, minimum=16))
    dtype: str | None = setting(None, flag=Flag(  # None: float32 for the tiny model, vLLM's choice otherwise
        "--dtype", "vLLM --dtype (the dtype of the model and of the hidden-state files). Default: float32 for the "
        "tiny model, vLLM's own choice (the model's dtype) otherwise.",
        type=click.Choice(["auto", "bfloat16", "float16", "float32"])))
    inject: str | None = setting(None, flag=Flag(  # fault-injection spec, see repro.vllm_plugins.faultspec
        "--inject", "Fault to inject inside vLLM (needs repro installed beside vLLM): "
        "stall-after=T | stall-after=Nsteps (block the scheduler for good, T s after the first request); "
        "stall-for=T[,after=A] (block it for T s once: slow, not dead); "
        "write-stall[=A] (hang inside the hidden-state file write); "
        "gpu-hang[=T] (a GPU kernel that never finishes on the engine's stream: EngineCore blocks in a CUDA wait); "
        "raise-after=T|Nsteps (raise inside the scheduler: EngineCore dies with a traceback); "
        "hazard=R,min_running=N[,seed=S] (permanent stall at random, R per hour while >= N requests run). "
        "Join several with ';'. Times: 30, 30s, 5m, 1h.", metavar="SPEC"))
    inject_control: str | None = setting(None, flag=Flag(  # a file the fault plugin re-reads at run time
        "--inject-control", "A file the fault plugin re-reads at run time: write a SPEC to arm, 'release' to "
        "unblock.", metavar="FILE"))
    extra_args: list[str] = field(default_factory=list)  # passed to vllm serve after ours
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the server
    vllm_cmd: list[str] | None = setting(None, flag=Flag(  # how to run vLLM's CLI; None: find it
        "--vllm-cmd", "How to run vLLM's CLI up to the model, e.g. 'python -m vllm.entrypoints.cli.main serve'. "
        "Default: the `vllm serve` next to this Python, else on PATH.", parse="words", metavar="CMD"))
    startup_timeout: float = setting(600.0, flag=Flag(
        "--startup-timeout", "How long to wait for the server to answer.", parse="duration", positive=True))
    log_stats_interval: float = 1.0  # VLLM_LOG_STATS_INTERVAL

    def validate(self) -> None:
        check_ranges(self)


@dataclass
class LoadSettings:
    """The load ``repro stress`` sends."""

    workload: str = setting("hidden-states", flag=Flag(  # hidden-states | chat | speculators | mixed:RATIO
        "--workload", "hidden-states: /v1/completions, token-id prompt, max_tokens=1, every file verified and "
        "consumed; chat: /v1/chat/completions with --max-tokens; mixed:RATIO: that share of hidden-states; "
        "speculators: exactly what speculators 0.9's generate-offline-data sends (same bodies, 2/4/8 s retry "
        "back-off, also on HTTP 4xx, 10 s LOCK_EX wait then lock removal, give-up after --max-consecutive-errors).",
        metavar="hidden-states|chat|speculators|mixed:RATIO"))
    concurrency: int = setting(32, flag=Flag("--concurrency", "Requests in flight at most.", type=int, short="-c",
                                             minimum=1))
    rate: float | None = setting(None, flag=Flag(  # Poisson arrivals per second; None: closed loop at `concurrency`
        "--rate", "Poisson arrivals per second (capped by --concurrency). Default: closed loop, always "
        "--concurrency in flight.", type=float, positive=True))
    duration: float | None = None  # seconds; None with requests None: until interrupted
    requests: int | None = setting(None, flag=Flag("--requests", "Stop after this many requests.", type=int,
                                                   minimum=1))
    request_timeout: float = setting(120.0, flag=Flag(
        "--request-timeout", "Client timeout per attempt; a timeout aborts the request on the server.",
        parse="duration", positive=True))
    retries: int = setting(3, flag=Flag("--retries", "Retries per request, with 2^n s backoff.", type=int,
                                        minimum=0))
    seed: int = setting(0, flag=Flag("--seed", "Seed for prompts, lengths, arrivals and the mixed workload.",
                                     type=int))
    prompt_len: tuple[int, int] = setting((128, 2048), flag=Flag(
        "--prompt-len", "Synthetic prompt length in tokens.", parse="span", aliases=("--workload-prompt-len",)))
    prompts_file: str | None = setting(None, flag=Flag(
        "--prompts", "Prompts instead of synthetic ones: one JSON per line, {\"prompt\": text}, {\"messages\": [...]} "
        "or {\"prompt_token_ids\": [...]}; or the directory `speculators prepare-data` wrote (its input_ids, in "
        "order; needs the datasets package).", metavar="FILE.jsonl|DIR"))
    max_tokens: int = setting(16, flag=Flag(  # chat workload; hidden-states always uses 1
        "--max-tokens", "Tokens to generate per chat request.", type=int))
    consume: str = setting("delete", flag=Flag(  # delete | move:DIR | keep
        "--consume", "What to do with each verified hidden-state file.", metavar="delete|move:DIR|keep"))
    keep_budget: int = setting(1000 * 1000 * 1000, flag=Flag(  # bytes kept at most with consume=keep
        "--keep-budget", "With --consume keep: keep at most this much.", parse="size"))
    keep_bad_budget: int = setting(256 * 1000 * 1000, flag=Flag(  # failing files kept in RUN_DIR/bad-files
        "--keep-bad", "Hidden-state files that fail their check are moved to RUN_DIR/bad-files for inspection, up "
        "to this much (0: delete them); the run then exits 4.", parse="size"))
    model_name: str | None = setting(None, flag=Flag(  # None: from /v1/models
        "--model-name", "Model id to request. Default: the first of /v1/models."))
    vocab_size: int | None = setting(None, flag=Flag(  # synthetic token ids are drawn below this
        "--vocab-size", "Synthetic token ids stay below this. Default: the model's config, else 500.", type=int))
    check_threads: int | None = setting(None, flag=Flag(  # None: load.checks.default_threads
        "--check-threads", "Threads verifying hidden-state files (default: concurrency/16 within 4..16, and no "
        "more than the CPU cores, 4 at least; more for slow storage).", type=int))
    client_procs: int = setting(1, flag=Flag(  # 1: the whole request path on the run's own event loop
        "--client-procs", "Client processes sending the load (each its share of --concurrency, --requests and "
        "--rate, with its own connection pool and file-check threads; the monitor, the detector and the records "
        "stay in one). One process sends, verifies and records about 1,500-2,000 requests/s: more are for fast "
        "servers on machines with cores to spare.", type=int, minimum=1))
    max_consecutive_errors: int | None = setting(None, flag=Flag(  # --workload speculators gives up after this many
        "--max-consecutive-errors", "With --workload speculators: stop (exit 3, outcome client-gave-up) after this "
        "many failed samples in a row, as speculators does. Default: --concurrency, speculators' default.",
        type=int))

    def validate(self) -> None:
        check_ranges(self)
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
        if self.client_procs > 1 and wl == "speculators":
            raise UsageError("--client-procs goes with one client process for --workload speculators: its give-up "
                             "rule counts one client's failed samples in a row; leave --client-procs at 1")
        if self.client_procs > self.concurrency:
            raise UsageError(f"--client-procs {self.client_procs} is more than --concurrency {self.concurrency}: "
                             f"each client process needs at least one request in flight")
        if self.consume not in CONSUME_POLICIES and not self.consume.startswith("move:"):
            raise UsageError(f"unknown --consume {self.consume!r}: use delete, keep or move:DIR")


@dataclass
class DetectSettings:
    """The stall detector (shared by stress and watch)."""

    poll_interval: float = setting(1.0, flag=Flag(
        "--poll-interval", "Seconds between evaluations (/metrics polls).", parse="duration", positive=True))
    window: float = setting(180.0, flag=Flag(
        "--window", "How long a bad state must last before it is a stall.", parse="duration", positive=True))
    min_bad_evaluations: int = setting(3, flag=Flag(
        "--min-bad", "Consecutive bad evaluations needed as well as the window.", type=int, minimum=1))
    slow_floor: float | None = setting(None, flag=Flag(
        "--slow-floor", "Progress below this many tokens/s over a whole window is reported as `slow`.",
        type=float, metavar="TOK/S", positive=True))
    startup_grace: float = setting(60.0, flag=Flag(
        "--startup-grace", "No stall (other than server-dead) is declared this early (from the start of the load, "
        "or in watch from when the model answers).", parse="duration", minimum=0))
    probe: bool = True  # when the server reports nothing running but the client waits: send a 1-token probe
    probe_timeout: float = setting(10.0, flag=Flag(
        "--probe-timeout", "A probe not answered by then counts as stuck.", parse="duration", positive=True))
    abort_window: float = 10.0  # abort-storm: seconds of client endings looked at
    abort_share: float = 0.5  # abort-storm: at least this share of the requests that ended were aborted
    abort_min: int = 10  # abort-storm: and at least this many aborts in the window

    def validate(self) -> None:
        check_ranges(self)


@dataclass
class CaptureSettings:
    """What to take when a stall is detected."""

    samples: int = setting(3, flag=Flag(
        "--samples", "py-spy dumps of every vLLM process, this many rounds (on a stall; capture: now).", type=int,
        minimum=1, maximum=50, aliases=("--capture-samples",)))
    interval: float = setting(2.0, flag=Flag(
        "--sample-interval", "Seconds between dump rounds.", parse="duration", minimum=0,
        aliases=("--interval", "--capture-interval")))
    native: bool = setting(True, flag=Flag("--native", "Also take py-spy --native dumps.", parse="flag",
                                           off="--no-native"))
    pyspy_timeout: float = 10.0
    size_budget: int = setting(20 * 1000 * 1000, flag=Flag(
        "--bundle-budget", "Size budget of the bundle (GitHub takes 25 MB per file); logs are trimmed first.",
        parse="size", positive=True, aliases=("--size-budget",)))
    redact_hosts: bool = setting(False, flag=Flag("--redact-hosts", "Replace hostnames and IPs by stable aliases.",
                                                  parse="flag"))
    # more server environment variables to show (names or wildcards; REPRO_ENV_ALLOW)
    env_allow: tuple[str, ...] = setting((), flag=Flag(
        "--env-allow", "Also show this variable of the server's environment in the bundle (repeatable; wildcards "
        "such as 'MYAPP_*'; or REPRO_ENV_ALLOW=NAME,NAME). Off the allow-list, a value is withheld (name kept); "
        "names that say secret are always withheld.", metavar="NAME", multiple=True))
    secret_scan: bool = True  # detect-secrets' detectors on every text and in the last check (off: benchmarks only)
    pyspy: str | None = setting(None, flag=Flag(  # py-spy executable; None: beside this Python, else PATH
        "--py-spy", "py-spy to use (default: beside repro, else PATH).", metavar="PATH"))
    docker_pyspy: str = "auto"  # "nsenter" (host py-spy inside a container's namespaces), "exec" (the image's py-spy),
    #                             "host" (host py-spy, host pids, no native frames), auto: nsenter as root, else exec
    stacks_budget: float = 15.0  # seconds for all stack samples of all processes (grows with samples*interval)
    collect_env: bool = setting(True, flag=Flag(  # run `python -m vllm.collect_env` with the server's Python
        "--collect-env", "Run vLLM's collect_env with the server's Python into the bundle (slow; runs during "
        "sampling).", parse="flag", off="--no-collect-env"))
    collect_env_timeout: float = 60.0  # runs in parallel with sampling; killed after this
    collect_env_cache: str | None = ""  # "": ~/.cache/repro/collect-env (24 h); None: never cache; else a dir
    log_tail_bytes: int = 4 * 1000 * 1000  # of the server log, before the size budget trims further

    def validate(self) -> None:
        check_ranges(self)


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
    storage_horizon: float = setting(1800.0, flag=Flag(  # storage-exhaustion warns when projected full within this
        "--storage-horizon", "Warn storage-exhaustion when the store is projected to fill within this.",
        parse="duration", positive=True))
    orphan_grace: float = setting(30.0, flag=Flag(  # an unclaimed file younger than this may still be claimed
        "--orphan-grace", "An unclaimed hidden-state file younger than this is pending, not yet an orphan (files "
        "appear late; a client may still claim it).", parse="duration", minimum=0, aliases=("--storage-grace",)))
    on_stall: str = setting("capture", flag=Flag(
        "--on-stall", "capture: hand the run to the capture stage (a bundle), then end; exit: end at once; "
        "restart: only `repro watch` restarts (its notification hook is --stall-hook).",
        type=click.Choice(ON_STALL)))
    out_dir: str | None = None
    api_key: str | None = setting(None, repr=False, flag=Flag(  # never serialised
        "--api-key", "Bearer token of the server (one started with --api-key); $REPRO_API_KEY, else $VLLM_API_KEY.",
        envvar=("REPRO_API_KEY", "VLLM_API_KEY")))
    invocation: list[str] | None = None  # the repro command line that started the run, secrets masked (the reproducer)
    server_cmdline: list[str] | None = None  # --server-command: an attached server's command line repro cannot read

    def validate(self) -> None:
        self.load.validate()
        self.detect.validate()
        self.capture.validate()
        check_ranges(self)
        if self.on_stall not in ON_STALL:
            raise UsageError(f"unknown --on-stall {self.on_stall!r}: use capture, exit or restart")

    def to_dict(self, record: "ServerRecord | None" = None) -> dict[str, Any]:
        """The serialised form (scenario.json): ``schema``/``version`` first, then every setting, then what
        ``record`` knows of the server (informational keys, never read back as settings); no API key."""
        d = dataclasses.asdict(self)
        d.pop("api_key", None)
        if record is not None:
            d.update(record.to_dict())
        return stamp(SCENARIO_FORMAT, d)

    @classmethod
    def from_dict(cls, d: Any, where: str = "scenario") -> "Scenario":
        """The Scenario of a serialised one (this repro's or an earlier one's): a foreign or future document,
        a key this repro does not know, or (from version 2 on) a missing key is a one-line UsageError."""
        return cls._parse(d, where)[0]

    @classmethod
    def _parse(cls, d: Any, where: str) -> "tuple[Scenario, ServerRecord]":
        version = version_of(SCENARIO_FORMAT, d, where)
        d = {k: v for k, v in d.items() if k not in ("schema", "version", "schema_version", "api_key")}
        record = ServerRecord.from_dict({k: d.pop(k) for k in RECORD_KEYS if k in d})
        for old, new in RENAMED.items():  # a setting renamed since: an earlier file's key reads as the new one
            (osec, _, okey), (nsec, _, nkey) = old.rpartition("."), new.rpartition(".")
            src = d.get(osec) if osec else d
            if isinstance(src, dict) and okey in src:
                dst = d.setdefault(nsec, {}) if nsec else d
                if isinstance(dst, dict):
                    dst.setdefault(nkey, src.pop(okey))
        strict = version >= 2  # version 1 files predate some settings: those take their defaults
        sections = {"server": ServerSettings, "load": LoadSettings, "detect": DetectSettings,
                    "capture": CaptureSettings}
        unknown: list[str] = []
        missing: list[str] = []
        parts: dict[str, Any] = {}
        for name, klass in sections.items():
            sub = d.pop(name, None)
            if sub is None:
                sub = {}
                missing += [name] if strict else []
            if not isinstance(sub, dict):
                raise UsageError(f"{where}: {name!r} must be an object, got {type(sub).__name__}")
            known = {f.name for f in dataclasses.fields(klass)}
            unknown += [f"{name}.{k}" for k in sub if k not in known]
            missing += [f"{name}.{k}" for k in known if k not in sub] if strict else []
            parts[name] = dict(sub)
        top = {f.name for f in dataclasses.fields(cls)} - set(sections) - {"api_key"}
        unknown += [k for k in d if k not in top]
        missing += [k for k in top if k not in d] if strict else []
        if unknown:
            raise UsageError(f"{where}: unknown scenario key(s) {', '.join(sorted(unknown))} "
                             f"(written by a newer repro, or edited by hand?)")
        if missing:
            raise UsageError(f"{where}: scenario key(s) missing: {', '.join(sorted(missing))}")
        if "prompt_len" in parts["load"]:
            parts["load"]["prompt_len"] = tuple(parts["load"]["prompt_len"])
        if "env_allow" in parts["capture"]:
            parts["capture"]["env_allow"] = tuple(parts["capture"]["env_allow"])
        try:
            built = {name: klass(**parts[name]) for name, klass in sections.items()}
            return cls(**built, **d), record
        except TypeError as exc:  # a value of the wrong shape: one line, not a traceback
            raise UsageError(f"{where}: not a valid scenario ({exc})") from None

    def write(self, path: Path, record: "ServerRecord | None" = None) -> None:
        """Write scenario.json (the one writer of that file)."""
        Path(path).write_text(json.dumps(self.to_dict(record), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> "Scenario":
        """Read scenario.json (this repro's or an earlier one's); bad files are a one-line UsageError."""
        return cls.read_with_record(path)[0]

    @classmethod
    def read_with_record(cls, path: Path) -> "tuple[Scenario, ServerRecord]":
        """The Scenario of scenario.json and what the run recorded there about its server."""
        return cls._parse(read_json(SCENARIO_FORMAT, Path(path)), str(path))


# Settings renamed since files were written: "section.old" -> "section.new" ("old" -> "new" at the top level).
# Add a line when a field of the settings dataclasses is renamed, so that earlier scenario.json files still read.
RENAMED: dict[str, str] = {}

RECORD_KEYS = ("server_command", "server_command_source", "server_log", "connector")


@dataclass
class ServerRecord:
    """What a run learned about its server, written beside the settings in scenario.json (never a setting):
    the server's command line and where it came from, its log, the hidden-states connector resolved."""

    server_command: list[str] | None = None
    server_command_source: str | None = None
    server_log: dict[str, Any] | None = None
    connector: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ServerRecord":
        return cls(**{k: d.get(k) for k in RECORD_KEYS})


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
