"""Start and stop the fake hung server of fake_vllm_server.py (its own process group)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port

PROGRAM = Path(__file__).with_name("fake_vllm_server.py")

# Planted secrets: none of these may appear in any file of a bundle.
SECRETS = {
    "HF_TOKEN": "hf_PlantedHuggingFaceToken0123456789abcd",
    "OPENAI_API_KEY": "sk-plantedOpenAIkey0123456789ABCDEFGH",
    "PLANTED_BEARER": "plantedBearerValue9876543210zyx",
    "DATABASE_URL": "postgres://repro:Planted-Db-Passw0rd@db.internal.example.com:5432/x",
    "API_KEY_FLAG": "planted-api-key-flag-value-42",
}
# The parts of them that must not survive (the URL's user and host may stay).
FORBIDDEN = ["hf_PlantedHuggingFaceToken0123456789abcd", "sk-plantedOpenAIkey0123456789ABCDEFGH",
             "plantedBearerValue9876543210zyx", "Planted-Db-Passw0rd", "planted-api-key-flag-value-42"]


@dataclass
class FakeServer:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    command: list[str]
    env: dict[str, str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


def start_fake(tmp: Path, mode: str = "scheduler", secrets: bool = True, timeout: float = 30.0,
               extra_env: dict[str, str] | None = None, extra_args: list[str] | None = None,
               echo_env: list[str] | None = None) -> FakeServer:
    """The fake server; `extra_env`/`extra_args` go to its environment and command line, the values of the
    `echo_env` variables are echoed into its log (as a server echoing its settings would)."""
    port = free_port()
    log = tmp / f"server-{mode}.log"
    ready = tmp / f"ready-{mode}"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROGRAM.parent)
    cmd = [sys.executable, str(PROGRAM), "serve", "--port", str(port), "--log", str(log), "--ready", str(ready),
           "--mode", mode]
    if secrets:
        env.update({k: v for k, v in SECRETS.items() if k != "API_KEY_FLAG"})
        cmd += ["--api-key", SECRETS["API_KEY_FLAG"],
                f"--db=postgres://repro:{SECRETS['DATABASE_URL'].split(':')[2].split('@')[0]}@localhost/x"]
    env.update(extra_env or {})
    cmd += list(extra_args or [])
    for name in echo_env or []:
        cmd += ["--echo-env", name]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            raise RuntimeError(f"fake server did not start (rc={proc.poll()})")
        time.sleep(0.05)
    time.sleep(0.3)  # the child has reached its hang point
    return FakeServer(proc, port, log, cmd, env)
