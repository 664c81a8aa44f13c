"""Docker targets: is the container running, what is its init's host pid, how to run its py-spy."""

from __future__ import annotations

import shutil
import subprocess

from repro.errors import TargetError


def inspect_command(name: str) -> list[str]:
    return ["docker", "inspect", "--format", "{{.State.Running}} {{.State.Pid}}", name]


def exec_pyspy_command(name: str, pid_in_container: int, *flags: str, pyspy: str = "py-spy") -> list[str]:
    """`docker exec NAME py-spy dump --pid PID ...` (pid as the container sees it)."""
    return ["docker", "exec", name, pyspy, "dump", "--pid", str(pid_in_container), *flags]


def logs_command(name: str, lines: int = 20000) -> list[str]:
    """The container's log (vLLM's stdout/stderr) when no --log-file is given."""
    return ["docker", "logs", "--tail", str(lines), name]


def parse_inspect(name: str, rc: int, out: str, err: str) -> int:
    """The host pid of the container's init; TargetError with one clear line otherwise."""
    if rc != 0:
        low = err.lower()
        if "no such object" in low or "no such container" in low:
            raise TargetError(f"no Docker container named {name!r}")
        if "permission denied" in low:
            raise TargetError(f"not allowed to talk to the Docker daemon ({err.strip().splitlines()[-1]})",
                              help="Run repro as root or as a member of the docker group.")
        if "cannot connect" in low or "is the docker daemon running" in low:
            raise TargetError("the Docker daemon is not running (cannot connect to it)")
        raise TargetError(f"docker inspect {name} failed: {(err or out).strip().splitlines()[-1:] or ['?']}")
    parts = out.split()
    if len(parts) < 2 or parts[0] != "true" or parts[1] == "0":
        raise TargetError(f"Docker container {name!r} is not running")
    return int(parts[1])


def container_pid(name: str, timeout: float = 10.0) -> int:
    if not shutil.which("docker"):
        raise TargetError(f"--docker {name}: the docker command is not installed here",
                          help="Run repro on the Docker host, or inside the container with --pid.")
    try:
        r = subprocess.run(inspect_command(name), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TargetError(f"docker inspect {name} did not answer within {timeout:.0f} s") from None
    return parse_inspect(name, r.returncode, r.stdout, r.stderr)
