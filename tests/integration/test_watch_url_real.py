"""`repro watch --url --pid --restart-cmd` against the REAL shared vLLM server.

watch did not launch this server: it finds the stall in /metrics and the log-less view,
captures the EngineCore through --pid, and restarts with the command it was given. The
"restart" here ends the injected stall, so the shared server keeps serving the others.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from repro.errors import EXIT_OK
from repro.bundle.reader import bundle_processes
from tests.integration.conftest import complete
from tests.helpers_watch_real import events, wait_event


def test_watch_attached_by_url_captures_through_pid_and_restarts_with_the_command(vllm_server, tmp_path):
    out = tmp_path / "run"
    restart = f"printf release > {shlex.quote(str(vllm_server.control))}"
    stop = threading.Event()
    done: list[float] = []

    def load() -> None:
        while not stop.is_set():
            try:
                complete(vllm_server.url, vllm_server.model, [3, 4, 5, 6], timeout=120, max_tokens=16)
                done.append(time.time())
            except Exception:  # noqa: BLE001
                time.sleep(0.5)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "repro", "watch", "--url", vllm_server.url, "--pid", str(vllm_server.server.pid),
         "--restart-cmd", restart, "--poll-interval", "0.5", "--window", "3", "--startup-grace", "0",
         # the stall may hit just after a step that finished every request: the gauges then freeze at
         # running=0 and only an unanswered probe tells the stuck engine from an idle one
         "--probe", "--probe-interval", "1", "--probe-timeout", "3",
         "--capture-samples", "1", "--no-collect-env", "--capture-budget", "60", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while len(done) < 5:
            time.sleep(0.1)
        wait_event(out, proc, "attached", timeout=60)
        vllm_server.inject("stall-after=0")
        healthy = wait_event(out, proc, "healthy", timeout=120)
        deadline = time.monotonic() + 30
        while not [t for t in done if t > healthy["t"]] and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        vllm_server.release()
        for t in threads:
            t.join(130)
    assert proc.returncode == EXIT_OK, err
    assert [t for t in done if t > healthy["t"]], "the load did not move after the restart command"
    ev = events(out)
    kinds = [e["event"] for e in ev if e["event"] != "detector"]
    assert kinds == ["watch-start", "attached", "detect", "capture", "stop", "port-free", "start", "healthy",
                     "watch-stop"], kinds
    stop_ev = next(e for e in ev if e["event"] == "stop")
    assert stop_ev["method"] == "restart-cmd" and stop_ev["command"] == restart
    assert next(e for e in ev if e["event"] == "port-free")["status"] == "skipped"
    cap = next(e for e in ev if e["event"] == "capture")
    assert cap["status"] == "done", cap
    procs_json = bundle_processes(Path(cap["dir"]))
    ours = {p.pid for p in vllm_server.server.processes()}
    assert {p["pid"] for p in procs_json} <= ours
    assert any(p["role"] == "engine_core" for p in procs_json)
    stacks = "".join(p.read_text(errors="replace") for p in (Path(cap["dir"]) / "stacks").rglob("*") if p.is_file())
    assert "repro_injected_scheduler_stall" in stacks
    # After the restart the server's root is found again by the URL's port.
    assert next(e for e in ev if e["event"] == "healthy")["pid"] == vllm_server.server.pid
