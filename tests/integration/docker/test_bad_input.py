"""Bad --docker input against a real engine: one line, exit 3, nothing touched.

A container that does not exist, one that is stopped, an engine that does not answer (DOCKER_HOST
naming a socket nobody serves), no permission on the engine's socket (a user outside the docker
group): capture, watch, stress and watchdog.sh each say so in one line and exit 3, before they
start, stop or kill anything. The containers that are there stay as they were.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from repro.errors import EXIT_TARGET
from tests.helpers_docker import ROOT, inspect

URL = "http://127.0.0.1:9"  # never reached: the container check comes first

COMMANDS = {
    "capture": ["capture", "--docker", "{name}", "--url", URL, "--no-collect-env"],
    "watch": ["watch", "--docker", "{name}", "--url", URL],
    "stress": ["stress", "--docker", "{name}", "--url", URL, "--duration", "10s"],
}


def run(tool: str, name: str, tmp: Path, env: dict[str, str] | None = None,
        user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    if tool == "watchdog.sh":
        cmd = ["sh", str(ROOT / "scripts" / "watchdog.sh"), "--container", name, "--url", URL]
    else:
        cmd = [sys.executable, "-m", "repro", *(a.format(name=name) for a in COMMANDS[tool]), "--out",
               str(tmp / tool)]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([*(user or []), *cmd], capture_output=True, text=True, timeout=120, env=full_env,
                          cwd=tmp, stdin=subprocess.DEVNULL)


def one_line(r: subprocess.CompletedProcess[str], text: str) -> None:
    assert r.returncode == EXIT_TARGET, (r.returncode, r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and text in lines[0], lines[0]


def states(*names: str) -> dict[str, Any]:
    return {n: (lambda s: (s["Status"], s["Pid"], s["StartedAt"]))(inspect(n)["State"]) for n in names}


TOOLS = ["capture", "watch", "stress", "watchdog.sh"]


@pytest.mark.parametrize("tool", TOOLS)
def test_a_container_that_does_not_exist(tool: str, idle_container: str, tmp_path: Path) -> None:
    before = states(idle_container)
    r = run(tool, "repro-test-no-such-container", tmp_path)
    one_line(r, "no Docker container named 'repro-test-no-such-container'" if tool != "watchdog.sh" else
             "No such container: repro-test-no-such-container")
    assert states(idle_container) == before
    assert not (tmp_path / tool).exists()  # no run directory, no bundle


@pytest.mark.parametrize("tool", TOOLS)
def test_a_stopped_container(tool: str, stopped_container: str, idle_container: str, tmp_path: Path) -> None:
    before = states(stopped_container, idle_container)
    r = run(tool, stopped_container, tmp_path)
    one_line(r, f"{stopped_container!r} is not running (status: exited, exit code 0)" if tool != "watchdog.sh"
             else f"--container {stopped_container} is not running (status: exited)")
    assert states(stopped_container, idle_container) == before  # not started, nothing else touched


@pytest.mark.parametrize("tool", TOOLS)
def test_an_engine_that_does_not_answer(tool: str, idle_container: str, tmp_path: Path) -> None:
    """DOCKER_HOST names a socket that exists but that no engine serves."""
    sock_path = tmp_path / "docker.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))  # bound, never listening: connections are refused
    try:
        before = states(idle_container)
        r = run(tool, idle_container, tmp_path, env={"DOCKER_HOST": f"unix://{sock_path}"})
    finally:
        s.close()
    one_line(r, "the Docker daemon is not running (cannot connect to it)" if tool != "watchdog.sh" else
             "Cannot connect to the Docker daemon")
    assert states(idle_container) == before


@pytest.mark.parametrize("tool", TOOLS)
def test_no_permission_on_the_engines_socket(tool: str, idle_container: str, tmp_path: Path) -> None:
    """A user outside the docker group (nobody; it may read this checkout and the virtualenv, nothing more)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is needed to run a command as another user")
    tmp_path.chmod(0o777)
    user = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search"]
    before = states(idle_container)
    r = run(tool, idle_container, tmp_path, env={"HOME": str(tmp_path)}, user=user)
    one_line(r, "not allowed to talk to the Docker daemon (permission denied on /var/run/docker.sock)"
             if tool != "watchdog.sh" else "permission denied while trying to connect to the Docker daemon")
    assert states(idle_container) == before
