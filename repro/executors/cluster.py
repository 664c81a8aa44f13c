"""Connecting to Ray: the address, the resource check, and errors that fit on one line.

Ray is imported here only (and only when ``--executor ray`` is asked for). Every failure
to connect or to fit a trial on the cluster is a :class:`~repro.errors.ReproError`, raised
before any actor starts, with whatever this process started already shut down.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

from repro.errors import TargetError, UsageError


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray, which is not installed",
                         help="Install the optional extra: pip install 'repro[ray]' (or pip install 'ray>=2.9').") \
            from None
    return ray


def split_address(address: str) -> tuple[str, int] | None:
    """'HOST:PORT' (or 'ray://HOST:PORT') -> (host, port); None for 'auto' / 'local'."""
    a = address.strip()
    if a in ("auto", "local"):
        return None
    for scheme in ("ray://", "http://", "https://"):
        if a.startswith(scheme):
            a = a[len(scheme):]
    host, sep, port = a.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--ray-address {address!r}: write HOST:PORT, e.g. 127.0.0.1:6379 (the head's GCS port)")
    return host.strip("[]"), int(port)


def probe(host: str, port: int, timeout: float = 3.0) -> str | None:
    """None if something accepts TCP connections at host:port, else the reason (refused, timed out, ...)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.timeout:
        return f"no answer within {timeout:.0f} s"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


@dataclass
class Ask:
    """What one trial or replica asks Ray for."""

    cpus: float = 1.0
    gpus: float = 0.0

    def options(self) -> dict[str, Any]:
        return {"num_cpus": self.cpus, "num_gpus": self.gpus}

    def describe(self) -> str:
        return f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")


@dataclass
class RaySession:
    """A connection to a Ray cluster for one run; ``close()`` disconnects (and stops a local instance)."""

    address: str | None
    ray: Any = field(repr=False, default=None)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None  # e.g. trials that will queue for a free slot

    def close(self) -> None:
        if self.ray is not None and self.ray.is_initialized():
            self.ray.shutdown()

    def __enter__(self) -> "RaySession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def alive_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.ray.nodes() if n.get("Alive")]

    def check_fits(self, ask: Ask, count: int = 1) -> str | None:
        """Raise UsageError if no node can hold one trial; return a note if `count` of them must queue."""
        nodes = self.alive_nodes()
        gpus = [float(n.get("Resources", {}).get("GPU", 0.0)) for n in nodes]
        cpus = [float(n.get("Resources", {}).get("CPU", 0.0)) for n in nodes]
        where = self.address or "the local Ray instance"
        if ask.gpus > max(gpus, default=0.0):
            raise UsageError(f"each trial asks for {ask.gpus:g} GPU(s) but the largest node of {where} has "
                             f"{max(gpus, default=0.0):g} ({sum(gpus):g} in the cluster, {len(nodes)} node(s)): "
                             "lower --ray-gpus or add GPU nodes")
        if ask.cpus > max(cpus, default=0.0):
            raise UsageError(f"each trial asks for {ask.cpus:g} CPU(s) but the largest node of {where} has "
                             f"{max(cpus, default=0.0):g} ({len(nodes)} node(s)): lower --ray-cpus")
        fit = sum(int(c // ask.cpus) if ask.cpus else 10**6 for c in cpus)
        if ask.gpus:
            fit = min(fit, sum(int(g // ask.gpus) for g in gpus))
        if count > fit:
            return (f"the cluster holds {fit} trial(s) of {ask.describe()} at once: "
                    f"{count - fit} of {count} will wait for a free slot")
        return None


def connect(address: str | None, ask: Ask | None = None, count: int = 1) -> RaySession:
    """Connect to the cluster at `address` (None: RAY_ADDRESS, else a local instance) and check `ask` fits.

    An unreachable address is a UsageError (exit 2) before Ray is even initialised; a cluster that
    refuses the connection is a TargetError (exit 3). Either way nothing is left running.
    """
    ray = import_ray()
    address = address or os.environ.get("RAY_ADDRESS") or None
    hp = split_address(address) if address else None
    if hp is not None:
        why = probe(*hp)
        if why is not None:
            raise UsageError(f"--ray-address {address}: cannot reach a Ray head at {hp[0]}:{hp[1]} ({why}); "
                             "start one with `ray start --head` or check the address")
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False, "configure_logging": True}
    if address:
        kwargs["address"] = address
    else:
        kwargs["include_dashboard"] = False
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError ...
        if ray.is_initialized():
            ray.shutdown()
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise TargetError(f"--ray-address {address or '(local)'}: Ray did not connect: {first}") from None
    session = RaySession(address, ray)
    try:
        session.nodes = session.alive_nodes()
        if ask is not None:
            session.note = session.check_fits(ask, count)
    except BaseException:
        session.close()
        raise
    return session


def node_label(info: dict[str, Any]) -> str:
    """A short human label of where an actor ran: 'ip (node abcdef12, pid N)'."""
    return f"{info.get('node_ip', '?')} (node {str(info.get('node_id', '?'))[:8]}, pid {info.get('pid', '?')})"
