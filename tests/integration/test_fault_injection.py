"""The fault plugin stalls the REAL scheduler; from outside, only progress tells (health checks lie)."""

import json
import subprocess
import sys
import threading
import time
import urllib.request

from repro.server.launcher import http_get
from tests.integration.conftest import complete


def metric(url: str, name: str) -> float:
    _, body = http_get(url + "/metrics", timeout=5)
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def long_generation(url: str, model: str, n: int, results: list) -> None:
    body = json.dumps({"model": model, "prompt": [1, 2, 3, 4], "max_tokens": 2000, "ignore_eos": True}).encode()

    def one():
        req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                results.append(r.status)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results.append(exc)

    for _ in range(n):
        threading.Thread(target=one, daemon=True).start()


def py_spy_dump(pid: int) -> str:
    py_spy = str(__import__("pathlib").Path(sys.executable).with_name("py-spy"))
    return subprocess.run([py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60).stdout


def test_stall_after_stops_generation_while_health_stays_200(vllm_server):
    """GIVEN requests generating WHEN stall-after=0 is armed THEN tokens stop, running stays > 0, /health is 200,
    and py-spy shows the injected frame under EngineCore.step."""
    url, results = vllm_server.url, []
    try:
        long_generation(url, vllm_server.model, 4, results)
        deadline = time.time() + 30
        while metric(url, "vllm:num_requests_running") < 1 and time.time() < deadline:
            time.sleep(0.2)
        assert metric(url, "vllm:generation_tokens_total") > 0
        vllm_server.inject("stall-after=0")
        time.sleep(2)
        gen0 = metric(url, "vllm:generation_tokens_total")
        time.sleep(4)
        assert metric(url, "vllm:generation_tokens_total") == gen0, "tokens kept coming during the stall"
        assert metric(url, "vllm:num_requests_running") > 0
        assert http_get(url + "/health")[0] == 200
        assert http_get(url + "/v1/models")[0] == 200
        engine = [p for p in vllm_server.server.processes() if p.role == "engine_core"][0]
        dump = py_spy_dump(engine.pid)
        main = dump.split("Thread ")[1]
        assert "repro_injected_scheduler_stall" in main
        assert main.index("repro_injected_scheduler_stall") < main.index("EngineCore.step")
        assert any(e["kind"] == "stall-after" for e in vllm_server.injected_events())
        assert not results, "a request finished during the stall"
    finally:
        vllm_server.release()
    deadline = time.time() + 120
    while len(results) < 4 and time.time() < deadline:
        time.sleep(0.5)
    assert results == [200] * 4, "the stalled requests did not finish after release"
    assert complete(url, vllm_server.model, [5, 6, 7])["choices"]
