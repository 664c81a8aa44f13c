"""What a bundle's ``context/gpu.json`` says about the GPUs during the capture: busy, idle, or neither.

The file (written by capture where ``nvidia-smi`` works; absent means no NVIDIA GPU) holds one reading
per GPU at capture time and ``samples``, a few readings taken while the stacks were sampled:

    {"schema": "repro.gpu", "version": 1, "taken_at": ..., "gpus": [{"index": 0, "name": "NVIDIA H200",
     "utilization_pct": 100.0, "power_w": 125.3, ...}], "processes": [{"pid": 123, "gpu_index": 0, ...}],
     "xid": [...], "samples": [{"t": 0.0, "gpus": [...]}]}

A GPU is **busy** when every reading is at least ``BUSY_PCT`` (a kernel that never finishes keeps it
at 100 %), **idle** when every reading is at most ``IDLE_PCT`` (a stall on the host side, in Python,
leaves it idle), **mixed** otherwise. The GPUs that matter are those holding memory of the engine's
processes when ``processes`` names them, else all of them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "repro.gpu"
BUSY_PCT = 90.0
IDLE_PCT = 10.0


@dataclass
class GpuState:
    state: str  # busy | idle | mixed | unknown
    readings: int  # utilization readings per GPU (capture time + samples)
    gpus: list[dict[str, Any]]  # index, name, util_min, util_max, power_w (last), memory_used_mib (last)
    xid: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def names(self) -> list[str]:
        return [g["name"] for g in self.gpus if g.get("name")]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def read(bundle: Path, pids: set[int] | None = None) -> GpuState | None:
    """The GPU state of a bundle, or None when it has no (readable) ``context/gpu.json``."""
    try:
        data = json.loads((Path(bundle) / "context" / "gpu.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), list):
        return None
    used = {p.get("gpu_index") for p in data.get("processes") or [] if isinstance(p, dict)
            and pids and p.get("pid") in pids}
    rows: dict[Any, list[dict[str, Any]]] = {}
    for reading in [data.get("gpus") or []] + [s.get("gpus") or [] for s in data.get("samples") or []
                                                if isinstance(s, dict)]:
        for g in reading:
            if isinstance(g, dict):
                rows.setdefault(g.get("index"), []).append(g)
    if used - {None}:
        rows = {i: r for i, r in rows.items() if i in used}
    gpus, utils = [], []
    for index, rs in sorted(rows.items(), key=lambda kv: (kv[0] is None, kv[0])):
        u = [x for x in (_num(r.get("utilization_pct")) for r in rs) if x is not None]
        utils.append(u)
        gpus.append({"index": index, "name": rs[-1].get("name"), "util_min": min(u) if u else None,
                     "util_max": max(u) if u else None, "power_w": _num(rs[-1].get("power_w")),
                     "memory_used_mib": _num(rs[-1].get("memory_used_mib"))})
    flat = [x for u in utils for x in u]
    if not flat:
        state = "unknown"
    elif all(x >= BUSY_PCT for x in flat):
        state = "busy"
    elif all(x <= IDLE_PCT for x in flat):
        state = "idle"
    else:
        state = "mixed"
    xid = [str(x) for x in data.get("xid") or []]
    return GpuState(state=state, readings=max((len(u) for u in utils), default=0), gpus=gpus, xid=xid)


def _util(g: dict[str, Any]) -> str:
    lo, hi = g.get("util_min"), g.get("util_max")
    if lo is None:
        return "no utilization reading"
    return f"{lo:.0f}%" if lo == hi else f"{lo:.0f}-{hi:.0f}%"


def note(gpu: GpuState | None, cuda_wait: str | None, stalled: bool) -> str | None:
    """One sentence for the analysis: what the GPU did while the engine's thread waited (or None)."""
    if gpu is None or not gpu.gpus:
        return None
    where = ", ".join(f"GPU {g['index']} ({g.get('name') or '?'}) {_util(g)}"
                      + (f" at {g['power_w']:.0f} W" if g.get("power_w") is not None else "") for g in gpu.gpus)
    n = f"in all {gpu.readings} readings" if gpu.readings > 1 else "at capture"
    xid = f" The kernel log has {len(gpu.xid)} Xid line(s): see context/gpu.json." if gpu.xid else ""
    if gpu.state == "busy" and cuda_wait:
        return (f"The GPU stayed busy {n} ({where}) while the thread waited in {cuda_wait}: a GPU kernel that "
                "never finishes. The CUDA driver spin-waits on the CPU, so the thread looks active and burns a "
                "core; it makes no progress." + xid)
    if gpu.state == "busy" and stalled:
        return f"The GPU stayed busy {n} ({where}): work on the GPU, not a host-side wait, holds the engine." + xid
    if gpu.state == "idle" and cuda_wait:
        return (f"The thread waits in {cuda_wait} for a GPU that is idle {n} ({where}): the awaited work never "
                "ran or its completion was missed." + xid)
    if gpu.state == "idle" and stalled:
        return (f"The GPU was idle {n} ({where}): the stall is on the host side (Python), not in a GPU kernel."
                + xid)
    return f"GPU utilization during the capture: {where}." + xid
