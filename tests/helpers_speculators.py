"""Helpers for the tests that drive the real `speculators` client (and repro's copy of it).

``Recorder`` is a stand-in OpenAI endpoint on loopback that records every request (arrival time,
path, headers, JSON body) and answers each attempt of each sample by a plan: ``ok``, ``500``,
``400``, ``hang`` (never answers: the client times out), ``bad-ids`` (a 200 whose prompt ids
differ), ``lock`` (ok, the ``.lock`` held for ``lock_hold`` s while the file is written), ``lock-held``
(ok, the lock never released). Files are written like vLLM 0.32's connector: the lock exists (held
LOCK_EX) before the path is returned, the data file is written under it.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from tests.helpers_http import ThreadedApp


@dataclass
class Arrival:
    t: float  # monotonic, when the request arrived
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON (None for GET)
    keys: list[str] = field(default_factory=list)  # the body's keys, in order


def sample_key(body: dict[str, Any]) -> int:
    """Samples are told apart by their first token id (the tests make them unique)."""
    return int(body["prompt"][0])


class Recorder:
    def __init__(self, store: Path, plan: dict[int, list[str]], model: str = "rec-model", lock_hold: float = 0.5,
                 default: str = "ok") -> None:
        self.store, self.plan, self.model, self.lock_hold, self.default = store, plan, model, lock_hold, default
        store.mkdir(parents=True, exist_ok=True)
        self.arrivals: list[Arrival] = []
        self.held: list[int] = []  # fds of locks held for good (released at close)
        self._attempts: dict[int, int] = {}
        self._n = 0
        self.server = ThreadedApp(self._app)

    @property
    def url(self) -> str:
        return self.server.url

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        return app

    def close(self) -> None:
        self.server.close()
        for fd in self.held:
            os.close(fd)

    def _record(self, request: web.Request, body: Any) -> None:
        h = {k.lower(): v for k, v in request.headers.items()}
        self.arrivals.append(Arrival(time.monotonic(), request.method, request.path, h, body,
                                     list(body) if isinstance(body, dict) else []))

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def models(self, request: web.Request) -> web.Response:
        self._record(request, None)
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model", "root": None}]})

    async def metrics(self, request: web.Request) -> web.Response:
        m, n = self.model, float(self._n)
        return web.Response(text=(f'vllm:num_requests_running{{model_name="{m}"}} 0.0\n'
                                  f'vllm:num_requests_waiting{{model_name="{m}"}} 0.0\n'
                                  f'vllm:prompt_tokens_total{{model_name="{m}"}} {n}\n'
                                  f'vllm:generation_tokens_total{{model_name="{m}"}} {n}\n'), content_type="text/plain")

    def requests_for(self, key: int) -> list[Arrival]:
        return [a for a in self.arrivals if a.method == "POST" and sample_key(a.body) == key]

    def _write(self, path: str, ids: list[int], hold: float | None) -> None:
        """Like vLLM 0.32: the lock is taken (LOCK_EX) before the path is returned; the file is written under it."""
        fd = os.open(path + ".lock", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        from safetensors.numpy import save_file

        save_file({"hidden_states": np.ones((len(ids), 2, 4), dtype=np.float32),
                   "token_ids": np.asarray(ids, dtype=np.int64)}, path)
        if hold is None:
            self.held.append(fd)
            return
        if hold <= 0:
            os.close(fd)
            return

        def release() -> None:
            time.sleep(hold)
            os.close(fd)

        threading.Thread(target=release, daemon=True).start()

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self._record(request, body)
        key = sample_key(body)
        attempt = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        steps = self.plan.get(key, [])
        action = steps[attempt] if attempt < len(steps) else self.default
        if action in ("500", "503", "400"):
            return web.json_response({"object": "error", "message": f"planned {action}"}, status=int(action))
        if action == "hang":
            await asyncio.sleep(3600)
        ids = list(body["prompt"])
        self._n += 1
        path = str(self.store / f"cmpl-{key}-{attempt}.safetensors")
        hold = self.lock_hold if action == "lock" else (None if action == "lock-held" else 0.0)
        self._write(path, ids, hold)
        answer_ids = ids if action != "bad-ids" else ids[::-1]
        return web.json_response({
            "id": f"cmpl-{key}-{attempt}", "object": "text_completion", "model": self.model,
            "choices": [{"index": 0, "text": "x", "finish_reason": "length", "token_ids": [7],
                         "prompt_token_ids": answer_ids}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1},
            "kv_transfer_params": {"hidden_states_path": path}})


def write_dataset(path: Path, samples: list[list[int]]) -> Path:
    """A speculators preprocessed dataset (what `speculators prepare-data` saves): input_ids, torch format."""
    import datasets

    datasets.Dataset.from_dict({"input_ids": samples}).with_format("torch").save_to_disk(str(path))
    return path


def speculators_exe() -> str:
    exe = Path(sys.executable).parent / "speculators"
    return str(exe) if exe.exists() else (shutil.which("speculators") or "speculators")


def offline_env() -> dict[str, str]:
    """No model hub, no telemetry: what the tests run speculators with."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               TQDM_DISABLE="1", COLUMNS="400")  # COLUMNS: rich would cut speculators' log lines
    return env


def run_speculators(endpoint: str, dataset: Path, output: Path, *args: str, timeout: float = 300,
                    popen: bool = False, log: Path | None = None) -> Any:
    """`speculators generate-offline-data` against ``endpoint`` (base URL + /v1) as a subprocess.

    ``popen``: return the running process (its output to ``log`` when given, else a pipe)."""
    cmd = [speculators_exe(), "generate-offline-data", "--endpoint", endpoint, "--preprocessed-data", str(dataset),
           "--output", str(output), *args]
    if popen:
        sink: Any = open(log, "w") if log is not None else subprocess.PIPE
        try:
            return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, text=True, env=offline_env(),
                                    start_new_session=True)
        finally:
            if log is not None:
                sink.close()
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=offline_env())


def require_speculators() -> None:
    """The real client must be there in CI (REPRO_REQUIRE_VLLM=1 covers it: .ci/run installs both)."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("speculators") is not None and importlib.util.find_spec("datasets") is not None:
        return
    if os.environ.get("REPRO_REQUIRE_VLLM") == "1":
        pytest.fail("speculators is not installed but REPRO_REQUIRE_VLLM=1: scripts/install_vllm_cpu.sh installs it")
    pytest.skip("speculators is not installed (scripts/install_vllm_cpu.sh installs it)")


def attempt_gaps(arrivals: list[Arrival]) -> list[float]:
    return [round(b.t - a.t, 3) for a, b in zip(arrivals, arrivals[1:])]


def dump(arrivals: list[Arrival]) -> str:
    return json.dumps([{"t": round(a.t, 3), "path": a.path, "body": a.body} for a in arrivals], default=str)[:4000]
