"""Docker targets: is the container running, what is its init's host pid, what does `docker inspect` say.

One ``docker inspect NAME`` answers every question repro asks of a container before it touches
anything: does it exist, is it running, which host pid is its init (the root of the server's
process tree on this host), which image it runs. Every failure of the client becomes a
:class:`~repro.errors.TargetError` with one line (exit 3): no such container, stopped, no engine,
no permission on the engine's socket.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from repro.errors import TargetError

INSPECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Container:
    """What `docker inspect` says about one container (``raw`` is its whole answer)."""

    name: str
    id: str
    image: str  # as the container was created: repo:tag (or an id)
    image_id: str
    status: str  # created | running | paused | restarting | exited | dead
    running: bool
    pid: int  # the host pid of the container's init, 0 when it is not running
    exit_code: int | None
    started_at: str | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        """The short record a bundle's manifest and a watch event carry."""
        return {"name": self.name, "id": self.id[:12], "image": self.image, "image_id": self.image_id,
                "status": self.status, "pid": self.pid, "started_at": self.started_at}


def inspect_command(name: str) -> list[str]:
    return ["docker", "inspect", "--type", "container", name]


def exec_pyspy_command(name: str, pid_in_container: int, *flags: str, pyspy: str = "py-spy") -> list[str]:
    """`docker exec NAME py-spy dump --pid PID ...` (pid as the container sees it)."""
    return ["docker", "exec", name, pyspy, "dump", "--pid", str(pid_in_container), *flags]


def logs_command(name: str, lines: int = 20000) -> list[str]:
    """The container's log (vLLM's stdout/stderr) when no --log-file is given."""
    return ["docker", "logs", "--tail", str(lines), name]


def client_error(name: str, err: str, out: str = "") -> TargetError:
    """The one-line TargetError (no help text: bad input is one line) for a failed docker call about `name`."""
    lines = [ln.strip() for ln in (err or out).strip().splitlines()
             if ln.strip() and not ln.startswith("WARNING: Error loading config file")]
    last = lines[-1] if lines else "no output"
    low = last.lower()
    if "no such object" in low or "no such container" in low:
        return TargetError(f"no Docker container named {name!r}")
    if "permission denied" in low:
        sock = re.search(r"unix://(\S+?):", last)
        where = f" on {sock.group(1)}" if sock else ""
        return TargetError(f"not allowed to talk to the Docker daemon (permission denied{where}): "
                           "run repro as root or as a member of the docker group")
    if "cannot connect" in low or "is the docker daemon running" in low:
        return TargetError("the Docker daemon is not running (cannot connect to it)")
    return TargetError(f"docker inspect {name} failed: {last}")


def parse_inspect(name: str, rc: int, out: str, err: str) -> Container:
    """A :class:`Container` from `docker inspect`'s answer; TargetError with one clear line otherwise."""
    if rc != 0:
        raise client_error(name, err, out)
    try:
        data = json.loads(out)
        c = data[0]
        state = c.get("State") or {}
    except (ValueError, IndexError, KeyError, TypeError, AttributeError):
        raise TargetError(f"docker inspect {name} printed something that is not a container description") from None
    return Container(name=str(c.get("Name") or name).lstrip("/"), id=str(c.get("Id") or ""),
                     image=str((c.get("Config") or {}).get("Image") or c.get("Image") or ""),
                     image_id=str(c.get("Image") or ""), status=str(state.get("Status") or "unknown"),
                     running=bool(state.get("Running")), pid=int(state.get("Pid") or 0),
                     exit_code=state.get("ExitCode"), started_at=state.get("StartedAt"), raw=c)


def inspect(name: str, timeout: float = INSPECT_TIMEOUT) -> Container:
    """`docker inspect NAME` as a Container; TargetError when docker is missing or the call fails."""
    if not shutil.which("docker"):
        raise TargetError(f"--docker {name}: the docker command is not installed here (run repro on the Docker "
                          "host, or inside the container with --pid)")
    try:
        r = subprocess.run(inspect_command(name), capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise TargetError(f"docker inspect {name} did not answer within {timeout:.0f} s") from None
    return parse_inspect(name, r.returncode, r.stdout, r.stderr)


def running(name: str, timeout: float = INSPECT_TIMEOUT) -> Container:
    """The container, which must be running (with a host pid); TargetError naming its state otherwise."""
    c = inspect(name, timeout)
    if not c.running or c.pid <= 0:
        code = f", exit code {c.exit_code}" if c.status in ("exited", "dead") and c.exit_code is not None else ""
        raise TargetError(f"Docker container {name!r} is not running (status: {c.status}{code}); "
                          f"start it with `docker start {name}`")
    return c


def container_pid(name: str, timeout: float = INSPECT_TIMEOUT) -> int:
    """The host pid of the running container's init."""
    return running(name, timeout).pid


def env_of(c: Container) -> dict[str, str]:
    """The container's configured environment (``Config.Env``) as a dict."""
    out = {}
    for item in (c.raw.get("Config") or {}).get("Env") or []:
        k, _, v = str(item).partition("=")
        out[k] = v
    return out
