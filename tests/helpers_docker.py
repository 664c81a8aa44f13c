"""Real Docker containers for the tests: the engine, the local images, a CPU vLLM in a container.

No stand-in client: every call goes to the `docker` command and a running engine. With
REPRO_REQUIRE_DOCKER=1 (set by .ci/run) a missing engine fails the Docker tests; otherwise
they skip with the reason. Images come from scripts/docker_test_image.sh (built once, then
found by their content-hash label).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from repro.scenario import ServerSettings
from repro.server.launcher import build_launch

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SCRIPT = ROOT / "scripts" / "docker_test_image.sh"
GB10_CPU = "repro-test/gb10:cpu"  # Dockerfile.gb10 on the local CPU vLLM image (what the script builds)
GB10_ARM64 = "repro-test/gb10:arm64"
BASE_AMD64 = "repro-test/debian:bookworm-amd64"
PREFIX = f"repro-test-{os.getpid()}"  # container names of this test session
# What a container's vLLM needs from the launcher's environment (the rest is this host's).
PASS_ENV = ("VLLM_", "REPRO_INJECT", "HF_HUB_OFFLINE", "PYTHONUNBUFFERED")


def docker(*args: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=env,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({r.returncode}): {(r.stderr or r.stdout)[-2000:]}")
    return r


def engine_problem() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    if shutil.which("docker") is None:
        return "the docker command is not installed (scripts/docker_engine.sh start installs and starts one)"
    try:
        r = docker("version", "--format", "{{.Server.Version}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer `docker version` within 30 s"
    if r.returncode != 0:
        return f"no Docker engine answers: {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
    return None


def require_docker() -> None:
    why = engine_problem()
    if why is None:
        return
    if os.environ.get("REPRO_REQUIRE_DOCKER") == "1":
        pytest.fail(f"REPRO_REQUIRE_DOCKER=1 but {why}: the Docker tests must run here")
    pytest.skip(f"{why}; set REPRO_REQUIRE_DOCKER=1 to fail instead")


def build_images(*which: str) -> None:
    """scripts/docker_test_image.sh WHICH... with this Python's virtualenv as the CPU vLLM (cached by label)."""
    env = {**os.environ, "REPRO_VENV": os.environ.get("REPRO_VENV", sys.prefix)}
    r = subprocess.run(["bash", str(IMAGE_SCRIPT), *which], capture_output=True, text=True, env=env,
                       timeout=3000, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise AssertionError(f"{IMAGE_SCRIPT.name} {' '.join(which)} failed:\n{r.stdout}\n{r.stderr[-3000:]}")


def inspect(name: str) -> dict[str, Any]:
    return json.loads(docker("inspect", "--type", "container", name).stdout)[0]


def host_pid(name: str) -> int:
    return int(inspect(name)["State"]["Pid"])


def titles_below(pid: int) -> dict[int, str]:
    """{host pid: title} of a process and its descendants (a container's processes, from its init)."""
    out = {}
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                out[p.pid] = " ".join(p.cmdline()).strip()  # setproctitle pads the title with spaces
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
    except psutil.NoSuchProcess:
        pass
    return out


def logs(name: str, tail: int = 60) -> str:
    r = docker("logs", "--tail", str(tail), name, check=False)
    return (r.stdout + r.stderr)[-6000:]


def answers(url: str, timeout: float = 5) -> bool:
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def wait_answering(url: str, name: str, timeout: float = 300) -> float:
    """Seconds until the model in container `name` answers at `url`; fails at once when the container exits."""
    t0 = time.monotonic()
    while not answers(url):
        state = inspect(name)["State"]
        if not state["Running"]:
            raise AssertionError(f"container {name} exited ({state.get('ExitCode')}) before it answered:\n"
                                 + logs(name))
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"container {name} did not answer at {url} within {timeout:.0f} s:\n" + logs(name))
        time.sleep(1)
    return time.monotonic() - t0


def remove(name: str) -> None:
    docker("rm", "-f", name, check=False, timeout=60)


@dataclass
class VllmContainer:
    """A CPU vLLM (the tiny model) in a container of the Dockerfile.gb10 image, on the host network.

    The model, the run directory (fault-plugin control file, injected.jsonl) and the hidden-state
    store are bind-mounted at the same paths as on the host, so that paths the server returns are
    valid here and the test arms a stall by writing the control file.
    """

    name: str
    port: int
    run_dir: Path
    storage: Path
    image: str = GB10_CPU
    extra_env: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def control(self) -> Path:
        return self.run_dir / "inject.control"

    def start(self, timeout: float = 300) -> float:
        """docker run the server; seconds until the model answers."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.control.write_text("")
        settings = ServerSettings(port=self.port, storage=str(self.storage), inject_control=str(self.control),
                                  vllm_cmd=["vllm", "serve"])
        cmd, env = build_launch(settings, self.run_dir)
        model = Path(cmd[2])
        self.command = cmd
        env_args = [a for k, v in sorted(env.items()) if k.startswith(PASS_ENV) for a in ("-e", f"{k}={v}")]
        env_args += [a for k, v in self.extra_env.items() for a in ("-e", f"{k}={v}")]
        docker("run", "-d", "--name", self.name, "--network", "host", "--shm-size", "1g", "--no-healthcheck",
               "-v", f"{model}:{model}:ro", "-v", f"{self.run_dir}:{self.run_dir}",
               "-v", f"{self.storage}:{self.storage}", *env_args, "--entrypoint", "vllm", self.image, *cmd[1:])
        return wait_answering(self.url, self.name, timeout)

    def inject(self, spec: str) -> None:
        self.control.write_text(spec)

    def release(self, timeout: float = 60) -> None:
        """End an injected stall; wait until the engine generates again."""
        self.control.write_text("release")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if complete(self.url, timeout=5):
                return
            time.sleep(0.5)
        raise AssertionError(f"{self.name} did not generate within {timeout:.0f} s of the release:\n" + logs(self.name))

    def pid(self) -> int:
        return host_pid(self.name)

    def processes(self) -> dict[int, str]:
        return titles_below(self.pid())

    def remove(self) -> None:
        remove(self.name)
        shutil.rmtree(self.storage, ignore_errors=True)


def complete(url: str, timeout: float = 10, model: str = "repro-tiny", max_tokens: int = 1) -> bool:
    """One completion of a short token-id prompt; True when it came back."""
    body = json.dumps({"model": model, "prompt": [1, 2, 3], "max_tokens": max_tokens}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return out


def wait_for_event(path: Path, kind: str, n: int = 1, timeout: float = 300,
                   proc: subprocess.Popen[str] | None = None) -> dict[str, Any]:
    """The n-th event `kind` of an events.jsonl, waiting for it (fails when `proc` exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in events(path) if e.get("event") == kind]
        if len(found) >= n:
            return found[n - 1]
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before event {kind} #{n}; events: "
                                 f"{[e.get('event') for e in events(path)]}")
        time.sleep(0.5)
    raise AssertionError(f"no event {kind} #{n} in {path} within {timeout:.0f} s; events: "
                         f"{[e.get('event') for e in events(path)]}")


class Load:
    """A few clients sending 16-token completions in a loop: requests are running when a stall is armed."""

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url, self.done, self.stop = url, 0, threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]

    def _loop(self) -> None:
        while not self.stop.is_set():
            if not complete(self.url, timeout=300, max_tokens=16):
                return
            self.done += 1

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        deadline = time.monotonic() + 60
        while self.done < 5:
            assert time.monotonic() < deadline, f"the load did not run against {self.url}"
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
