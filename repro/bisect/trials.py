"""What one real bisect trial is: its scenario, its slot's CPUs/GPUs, and the exposure it has shown so far.

The backends that run trials (:mod:`repro.executors.local` on this machine, :mod:`repro.executors.ray_backend`
on a cluster) build every trial from :func:`trial_scenario`; ``repro_min.sh`` is written from it too, so the
reproducer runs exactly what the search ran.
"""

from __future__ import annotations

import calendar
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from repro.bisect.space import Config, SearchSpace, apply
from repro.scenario import Scenario
from repro.server import tinymodel
from repro.server.launcher import has_gpu


def cpu_slices(n: int) -> list[str]:
    """Split this process's CPUs into n contiguous VLLM_CPU_OMP_THREADS_BIND lists ('0-3', '4-7', ...)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = list(range(os.cpu_count() or 1))
    if n <= 1 or len(cpus) < n:
        return ["nobind"] * max(1, n)
    per = len(cpus) // n
    out = []
    for i in range(n):
        part = cpus[i * per:(i + 1) * per]
        out.append(",".join(str(c) for c in part))
    return out


def gpu_slices(n: int) -> list[str | None]:
    """Split the visible GPUs into n CUDA_VISIBLE_DEVICES lists (None: leave as is)."""
    if n <= 1:
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devs = [d for d in visible.split(",") if d] if visible else [str(p.name[len("nvidia"):]) for p in
                                                                  sorted(Path("/dev").glob("nvidia[0-9]*"))]
    if len(devs) < n:
        return [None] * n
    per = len(devs) // n
    return [",".join(devs[i * per:(i + 1) * per]) for i in range(n)]


def slot_env(slot: int, parallel: int) -> dict[str, str]:
    if has_gpu():
        g = gpu_slices(parallel)[slot]
        return {"CUDA_VISIBLE_DEVICES": g} if g is not None else {}
    return {"VLLM_CPU_OMP_THREADS_BIND": cpu_slices(parallel)[slot]}


def _parse_wall(w: str) -> float:
    whole, _, frac = w.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))


def exposure_so_far(trial_dir: Path, duration: float, now: float | None = None) -> float | None:
    """Exposure of a running stress run from its events.jsonl, never more than it will be credited.

    Time since the `start` event, capped at the duration (the drain after it is not load), at the
    onset of a suspected stall (`began` of a suspect/stalled detector event, `since` in older runs), and frozen once the
    run has stopped. None before the load has started.
    """
    now = time.time() if now is None else now
    started: float | None = None
    cap = duration
    stopped_at: float | None = None
    try:
        with open(trial_dir / "events.jsonl") as f:
            for line in f:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                kind = ev.get("event")
                if kind == "start" and ev.get("wall") and started is None:
                    started = _parse_wall(ev["wall"])
                elif kind == "detector":
                    onset = ev.get("began", ev.get("since"))
                    if ev.get("state") in ("suspect", "stalled") and onset is not None:
                        cap = min(duration, float(onset))
                    else:
                        cap = duration
                elif kind in ("stop", "stall") and stopped_at is None and ev.get("t") is not None:
                    stopped_at = float(ev["t"])
    except OSError:
        return None
    if started is None:
        return None
    run = now - started if stopped_at is None else stopped_at
    return max(0.0, min(run, cap))


def trial_scenario(base: Scenario, space: SearchSpace, cfg: Config, duration: float, port: int,
                   slot: int, parallel: int, trial_dir: Path) -> Scenario:
    model_dir = None
    if base.server.model is None:
        model_dir = tinymodel.ensure()
    elif Path(base.server.model).expanduser().exists():
        model_dir = Path(base.server.model).expanduser()
    n_layers = tinymodel.model_layers(model_dir) if model_dir else None
    scn = apply(base, space, cfg, n_layers)
    scn.load.duration = duration
    scn.load.requests = None
    scn.server.port = port
    scn.url = None
    if parallel > 1:
        scn.server.storage = str(Path(scn.server.storage) / f"slot{slot}")
    scn.server.env = {**scn.server.env, **slot_env(slot, parallel)}
    scn.out_dir = str(trial_dir)
    if scn.on_stall == "restart":
        scn.on_stall = "capture"
    return scn


def server_key(settings: Any) -> str:
    """What makes two trials' servers interchangeable: every launch setting but the port."""
    d = dataclasses.asdict(settings)
    d.pop("port", None)
    return json.dumps(d, sort_keys=True, default=str)


def reusable_injection(spec: str | None) -> bool:
    """A server may serve several trials unless its injected fault is timed from its start (stall-after=...).

    A hazard with an onset in engine steps is an engine that ages: a reused server carries its age on.
    """
    if not spec:
        return True
    return all(part.split("=")[0].strip() in ("hazard", "min_running", "seed", "onset") for part in spec.split(","))
