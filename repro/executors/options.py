"""The ``--executor`` flags shared by ``repro bisect`` and ``repro stress`` (no Ray import here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from repro.errors import UsageError
from repro.executors.cluster import Ask


@dataclass
class ExecutorSettings:
    kind: str  # local | ray
    address: str | None
    ask: Ask
    artifact_dir: str | None


def ray_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
                     help="Where trials run: this machine, or a Ray cluster (pip install 'repro[ray]'), "
                          "one actor per trial with its own vLLM server."),
        click.option("--ray-address", default=None, metavar="HOST:PORT",
                     help="Ray head to use with --executor ray (default: $RAY_ADDRESS, else a local Ray instance)."),
        click.option("--ray-cpus", type=click.FloatRange(min=0.0), default=1.0,
                     help="CPUs each trial (or replica) asks Ray for."),
        click.option("--ray-gpus", type=click.FloatRange(min=0.0), default=0.0,
                     help="GPUs each trial (or replica) asks Ray for (Ray sets CUDA_VISIBLE_DEVICES)."),
        click.option("--artifact-dir", default=None, metavar="DIR",
                     help="With --executor ray: a directory every node and this machine share; trial evidence is "
                          "written there and copied into the run directory (default: sent through Ray's object store)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def executor_settings(kw: dict[str, Any]) -> ExecutorSettings:
    kind = kw.get("executor") or "local"
    if kind != "ray":
        for flag, key, default in (("--ray-address", "ray_address", None), ("--artifact-dir", "artifact_dir", None),
                                   ("--ray-gpus", "ray_gpus", 0.0), ("--ray-cpus", "ray_cpus", 1.0)):
            if kw.get(key) not in (None, default):
                raise UsageError(f"{flag} needs --executor ray")
    art = kw.get("artifact_dir")
    if art:
        p = Path(art).expanduser()
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--artifact-dir {art}: cannot create it ({exc.strerror})") from None
        art = str(p.resolve())
    return ExecutorSettings(kind, kw.get("ray_address"), Ask(float(kw.get("ray_cpus", 1.0)),
                                                             float(kw.get("ray_gpus", 0.0))), art)
