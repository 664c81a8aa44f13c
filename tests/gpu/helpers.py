"""What the GPU check's steps share: running repro commands with a hard timeout, reading what they wrote."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.gpu.harness import Context, child_env, complete, repro_argv, stop_group

# Native frames of a thread waiting for the GPU (py-spy --native names the CUDA driver/runtime calls).
CUDA_WAITS = ("cuEventSynchronize", "cudaEventSynchronize", "cuStreamSynchronize", "cudaStreamSynchronize",
              "cuCtxSynchronize", "cudaDeviceSynchronize", "cuMemcpyDtoH", "cudaMemcpy", "cuMemcpy")


@dataclass
class Ran:
    rc: int | None  # None: killed at the timeout
    seconds: float
    log: Path
    out: Path | None = None

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def run_repro(ctx: Context, args: list[str], log: Path, timeout: float, out: Path | None = None) -> Ran:
    """`repro ARGS` in its own process group; SIGTERM then SIGKILL of the group at `timeout`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log, "ab") as f:
        p = subprocess.Popen(repro_argv(*args), stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=child_env(ctx), start_new_session=True)
        try:
            rc: int | None = p.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_group(p.pid, grace=20.0)
            p.wait(30)
            rc = None
        except BaseException:  # the step's own timeout (pytest-timeout) or Ctrl-C: leave nothing running
            stop_group(p.pid, grace=5.0)
            raise
    return Ran(rc, round(time.monotonic() - t0, 1), log, out)


def run_repro_guarding_store(ctx: Context, args: list[str], log: Path, timeout: float, store: str,
                             min_free: float) -> tuple[Ran, float | None]:
    """`run_repro`, but stopped early (SIGINT: it writes its summary) when the store's filesystem falls below
    `min_free` bytes: every server's store shares /dev/shm, and a full one kills their engines. Returns the run
    and the free bytes at which it was stopped (None: it was not)."""
    import shutil

    t0 = time.monotonic()
    p = start_repro(ctx, args, log)
    stopped_at = None
    try:
        while p.poll() is None and time.monotonic() - t0 < timeout:
            free = shutil.disk_usage(store).free
            if free < min_free and stopped_at is None:
                stopped_at = float(free)
                os.killpg(p.pid, signal.SIGINT)
            time.sleep(0.5)
    finally:
        rc = end(p) if p.poll() is None else p.returncode
    return Ran(rc if time.monotonic() - t0 < timeout else None, round(time.monotonic() - t0, 1), log), stopped_at


def start_repro(ctx: Context, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`repro ARGS` in the background, in its own process group (stop it with `end`)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        return subprocess.Popen(repro_argv(*args), stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env(ctx), start_new_session=True)


def end(p: subprocess.Popen[bytes], grace: float = 20.0) -> int | None:
    """SIGINT (stress writes its summary), then the group's SIGTERM/SIGKILL."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            stop_group(p.pid, grace=10.0)
    try:
        return p.wait(10)
    except subprocess.TimeoutExpired:
        return None


def stress_args(server: dict[str, Any], out: Path, *flags: str, storage: bool = True) -> list[str]:
    """`repro stress` attached to a started server: its log followed, its store censused."""
    args = ["stress", "--url", server["url"], "--log-file", server["log"], "--out", str(out)]
    if storage:
        args += ["--storage-path", server["storage"]]
    return args + list(flags)


def summary(run_dir: Path) -> dict[str, Any]:
    p = Path(run_dir) / "summary.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def events(path: Path) -> list[dict[str, Any]]:
    """The records of an events.jsonl or injected.jsonl, with ``t`` in epoch seconds (whatever the file's version)."""
    from repro.monitor.events import epoch_of

    try:
        return epoch_of([json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()])
    except OSError:
        return []


def wait_event(path: Path, kind: str, timeout: float, after_seq: int = 0) -> dict[str, Any] | None:
    """The first watch event `kind` with seq > after_seq, waiting up to `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in events(path):
            if e.get("event") == kind and int(e.get("seq") or 0) > after_seq:
                return e
        time.sleep(0.5)
    return None


def native_cuda_frames(bundle: Path) -> list[str]:
    """The CUDA-wait lines of EngineCore's --native dumps in a bundle (empty: none)."""
    hits = []
    for f in sorted(Path(bundle).glob("stacks/*EngineCore*/sample-*.native.txt")):
        for line in f.read_text(errors="replace").splitlines():
            if any(w in line for w in CUDA_WAITS):
                hits.append(f"{f.parent.name}/{f.name}: {line.strip()[:160]}")
    return hits


def gpu_readings(bundle: Path) -> dict[str, Any] | None:
    """Utilization over the samples of context/gpu.json (None: no such file)."""
    p = Path(bundle) / "context" / "gpu.json"
    if not p.is_file():
        return None
    g = json.loads(p.read_text())
    util = [x["utilization_pct"] for s in g.get("samples", []) for x in s["gpus"][:1] if x["utilization_pct"] is not None]
    power = [x["power_w"] for s in g.get("samples", []) for x in s["gpus"][:1] if x["power_w"] is not None]
    return {"schema": g.get("schema"), "samples": len(g.get("samples", [])),
            "util_min": min(util) if util else None, "util_median": statistics.median(util) if util else None,
            "util_max": max(util) if util else None, "power_median_w": statistics.median(power) if power else None,
            "processes": len(g.get("processes", [])), "xid_lines": len(g.get("xid", []))}


def file_dtype(url: str, model: str, prompt_len: int = 64) -> str | None:
    """Send one request and read the dtype of the hidden-state file it names from the safetensors header."""
    r = complete(url, model, list(range(10, 10 + prompt_len)))
    path = ((r.get("kv_transfer_params") or {}).get("hidden_states_path"))
    if not path:
        return None
    for _ in range(100):  # newer connectors write after the response
        lock = path + ".lock"
        if os.path.exists(path) and not _locked(lock):
            break
        time.sleep(0.1)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        return str(header.get("hidden_states", {}).get("dtype"))
    finally:
        for p in (path, path + ".lock"):
            try:
                os.unlink(p)
            except OSError:
                pass


def _locked(lock: str) -> bool:
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def write_control(server: dict[str, Any], text: str) -> None:
    Path(server["control"]).write_text(text + "\n")


def log_shows_56841(log_path: str | Path) -> bool:
    """Whether a server log shows EngineCore killed by the stock connector's KeyError in request_finished
    (upstream #56841: a request aborted before it was scheduled, vLLM 0.24-0.26)."""
    try:
        log = open(log_path, errors="replace").read()[-4_000_000:]
    except OSError:
        return False
    return "KeyError" in log and "request_finished" in log


def died_of_56841(server: dict[str, Any]) -> bool:
    """:func:`log_shows_56841` of a registered server's log."""
    return log_shows_56841(server["log"])


def wait_serving(server: dict[str, Any], timeout: float) -> float | None:
    """Seconds until one completion succeeds (None: not within `timeout`)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            complete(server["url"], server["model"], [10, 11, 12, 13], timeout=10)
            return round(time.monotonic() - t0, 1)
        except (OSError, ValueError):
            time.sleep(1.0)
    return None


def clear_store(path: str) -> int:
    n = 0
    for name in os.listdir(path):
        try:
            os.unlink(os.path.join(path, name))
            n += 1
        except OSError:
            pass
    return n


def store_listing(path: str) -> tuple[int, int, int]:
    """(.safetensors files, .lock files, bytes of the data files) in a store."""
    data = locks = size = 0
    for name in os.listdir(path):
        if name.endswith(".lock"):
            locks += 1
        elif name.endswith(".safetensors"):
            data += 1
            try:
                size += os.path.getsize(os.path.join(path, name))
            except OSError:
                pass
    return data, locks, size
