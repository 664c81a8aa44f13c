"""The ``--executor`` flags shared by ``repro bisect`` and ``repro stress`` (no Ray import here).

Each flag is declared once, on the :class:`ExecutorSettings` field it fills; :meth:`ExecutorSettings.validate`
makes every check (ranges, and the Ray-only flags refused without ``--executor ray``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from repro.errors import UsageError
from repro.executors.cluster import Ask
from repro.options import Flag, check_ranges, options, setting, values

RAY_OPTIONS = ("kind", "address", "cpus", "gpus", "artifact_dir")  # every command that runs trials or replicas
FLEET_OPTIONS = ("replicas", "keep_going")  # stress only: independent soaks side by side


@dataclass
class ExecutorSettings:
    kind: str = setting("local", flag=Flag(  # local | ray
        "--executor", "Where trials run: this machine, or a Ray cluster (pip install 'repro[ray]'), one actor per "
        "trial with its own vLLM server.", type=click.Choice(["local", "ray"])))
    address: str | None = setting(None, flag=Flag(
        "--ray-address", "Ray head to use with --executor ray (default: $RAY_ADDRESS, else a local Ray instance).",
        metavar="HOST:PORT"))
    cpus: float = setting(1.0, flag=Flag("--ray-cpus", "CPUs each trial (or replica) asks Ray for.", type=float,
                                         minimum=0))
    gpus: float = setting(0.0, flag=Flag(
        "--ray-gpus", "GPUs each trial (or replica) asks Ray for (Ray sets CUDA_VISIBLE_DEVICES).", type=float,
        minimum=0))
    artifact_dir: str | None = setting(None, flag=Flag(
        "--artifact-dir", "With --executor ray: a directory every node and this machine share; trial evidence is "
        "written there and copied into the run directory (default: sent through Ray's object store).",
        metavar="DIR"))
    replicas: int = setting(1, flag=Flag(
        "--replicas", "With --executor ray: this many independent soaks, each with its own server on its node.",
        type=int, minimum=1))
    keep_going: bool = setting(False, flag=Flag(
        "--keep-going", "With --replicas: at a stall stop only the stalled replica (default: stop them all).",
        parse="flag"))

    @property
    def ask(self) -> Ask:
        """What each trial or replica asks Ray for."""
        return Ask(float(self.cpus), float(self.gpus))

    def validate(self) -> None:
        """Every check of the executor settings: one UsageError naming the flag."""
        if self.kind not in ("local", "ray"):
            raise UsageError(f"unknown --executor {self.kind!r}: use local or ray")
        if self.kind != "ray":
            for flag, given in (("--ray-address", self.address is not None),
                                ("--artifact-dir", self.artifact_dir is not None),
                                ("--ray-gpus", self.gpus != 0.0), ("--ray-cpus", self.cpus != 1.0)):
                if given:
                    raise UsageError(f"{flag} needs --executor ray")
            if self.replicas != 1 or self.keep_going:
                raise UsageError("--replicas and --keep-going need --executor ray")
        check_ranges(self)


ray_options: Callable[[Callable[..., Any]], Callable[..., Any]] = options(ExecutorSettings, RAY_OPTIONS)
fleet_options: Callable[[Callable[..., Any]], Callable[..., Any]] = options(ExecutorSettings, FLEET_OPTIONS)


def executor_settings(kw: dict[str, Any]) -> ExecutorSettings:
    """The executor settings from a command's keywords (popped), checked; --artifact-dir is created."""
    ex = ExecutorSettings(**values(ExecutorSettings, kw))
    ex.validate()
    if ex.artifact_dir:
        p = Path(ex.artifact_dir).expanduser()
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--artifact-dir {ex.artifact_dir}: cannot create it ({exc.strerror})") from None
        ex.artifact_dir = str(p.resolve())
    return ex
