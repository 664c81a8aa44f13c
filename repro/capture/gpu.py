"""GPU telemetry for a bundle: ``context/gpu.json`` (schema ``repro.gpu``, version 1).

Read with ``nvidia-smi --query-gpu=... --format=csv,noheader,nounits`` (per GPU:
utilization, memory, power, temperature) and ``--query-compute-apps=...`` (GPU
memory per process), plus the kernel's ``NVRM: Xid`` lines. A few readings are
taken while the stacks are sampled (:class:`GpuSampler`), so that a GPU pinned
at 100% through the whole capture -- a kernel that never finishes -- can be told
from a spike, and from the idle GPU of an engine stuck in Python::

    {"schema": "repro.gpu", "version": 1, "taken_at": ISO-8601,
     "gpus": [{"index", "name", "uuid", "utilization_pct", "memory_used_mib", "memory_total_mib",
               "power_w", "temperature_c"}],
     "processes": [{"pid", "gpu_index", "used_memory_mib"}],
     "xid": ["...kernel lines..."],
     "samples": [{"t": seconds since the first, "gpus": [...same per-GPU fields...]}]}

The file is absent when there is no NVIDIA GPU (no ``nvidia-smi``). Values
nvidia-smi cannot give (``[N/A]``) are null.
"""

from __future__ import annotations

import shutil
import threading
import time
from typing import Any

from repro.capture.pyspy import run_with_timeout
from repro.formats import GPU_FORMAT

SCHEMA, VERSION = GPU_FORMAT.schema, GPU_FORMAT.version
GPU_FIELDS = ("index", "name", "uuid", "utilization.gpu", "memory.used", "memory.total", "power.draw",
              "temperature.gpu")
APP_FIELDS = ("pid", "gpu_uuid", "used_memory")
_KEYS = ("index", "name", "uuid", "utilization_pct", "memory_used_mib", "memory_total_mib", "power_w",
         "temperature_c")


def find_smi() -> str | None:
    return shutil.which("nvidia-smi")


def _num(text: str) -> float | None:
    t = text.strip()
    try:
        return float(t)
    except ValueError:
        return None  # [N/A], [Not Supported], empty


def parse_gpus(text: str) -> list[dict[str, Any]]:
    """Rows of ``--query-gpu=index,name,uuid,utilization.gpu,memory.used,memory.total,power.draw,temperature.gpu``."""
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < len(GPU_FIELDS):
            continue
        # a name with commas: everything between index and uuid (the uuid starts with GPU-)
        uuid_at = next((i for i in range(2, len(parts)) if parts[i].startswith(("GPU-", "MIG-"))), 2)
        name = ", ".join(parts[1:uuid_at])
        rest = parts[uuid_at:]
        if len(rest) < 6:
            continue
        idx = _num(parts[0])
        if idx is None:
            continue
        vals = [_num(x) for x in rest[1:6]]
        out.append(dict(zip(_KEYS, [int(idx), name, rest[0], *vals])))
    return out


def parse_apps(text: str, uuid_index: dict[str, int]) -> list[dict[str, Any]]:
    """Rows of ``--query-compute-apps=pid,gpu_uuid,used_memory``; the GPU named by its index."""
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        out.append({"pid": int(parts[0]), "gpu_index": uuid_index.get(parts[1]), "used_memory_mib": _num(parts[2])})
    return out


def query_gpus(smi: str, timeout: float = 10.0) -> tuple[list[dict[str, Any]], str | None]:
    cmd = [smi, f"--query-gpu={','.join(GPU_FIELDS)}", "--format=csv,noheader,nounits"]
    rc, out, err, _, timed_out = run_with_timeout(cmd, timeout)
    if rc != 0 or timed_out:
        return [], f"`{' '.join(cmd)}` {'timed out' if timed_out else f'exited {rc}'}: {err.strip()[-300:]}"
    return parse_gpus(out), None


def query_processes(smi: str, gpus: list[dict[str, Any]], timeout: float = 10.0
                    ) -> tuple[list[dict[str, Any]], str | None]:
    cmd = [smi, f"--query-compute-apps={','.join(APP_FIELDS)}", "--format=csv,noheader,nounits"]
    rc, out, err, _, timed_out = run_with_timeout(cmd, timeout)
    if rc != 0 or timed_out:
        return [], f"`{' '.join(cmd)}` {'timed out' if timed_out else f'exited {rc}'}: {err.strip()[-300:]}"
    return parse_apps(out, {g["uuid"]: g["index"] for g in gpus}), None


def memory_of(pids: set[int], smi: str | None = None) -> dict[str, Any] | None:
    """GPU memory held by `pids` and in use per GPU now (None without nvidia-smi)."""
    smi = smi or find_smi()
    if not smi:
        return None
    gpus, err = query_gpus(smi)
    procs, err2 = query_processes(smi, gpus)
    held = [p for p in procs if p["pid"] in pids]
    return {"held_mib": round(sum(p["used_memory_mib"] or 0.0 for p in held), 1),
            "held_by": sorted(p["pid"] for p in held),
            "memory_used_mib": [g["memory_used_mib"] for g in gpus], "error": err or err2}


class GpuSampler:
    """Per-GPU readings every `interval` s in a thread, between start() and stop() (at most `max_samples`)."""

    def __init__(self, smi: str, interval: float = 1.0, max_samples: int = 60) -> None:
        self.smi = smi
        self.interval = interval
        self.max_samples = max_samples
        self.samples: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="repro-gpu-sampler", daemon=True)
        self._t0: float | None = None

    def start(self) -> "GpuSampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.samples) < self.max_samples:
            t = time.monotonic()
            gpus, err = query_gpus(self.smi, timeout=max(2.0, 3 * self.interval))
            if self._t0 is None:
                self._t0 = t
            if err:
                self.errors.append(err)
            else:
                self.samples.append({"t": round(t - self._t0, 3), "gpus": gpus})
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t)))

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join(15.0)
        return list(self.samples)


def iso_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def report(smi: str, xid_lines: list[str], samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The content of context/gpu.json: a reading now, the processes, the Xid lines, the samples."""
    gpus, err = query_gpus(smi)
    procs, err2 = query_processes(smi, gpus)
    d: dict[str, Any] = {"schema": SCHEMA, "version": VERSION, "taken_at": iso_now(), "gpus": gpus,
                         "processes": procs, "xid": list(xid_lines), "samples": samples}
    errors = [e for e in (err, err2) if e]
    if errors:
        d["errors"] = errors
    return d
