"""`repro watch --serve` against a REAL vLLM on CPU (the test owns its server: watch restarts it).

One watch, two server starts (a start costs 40-90 s here, so the phases share them):

1. Under load, an injected scheduler stall is detected, a bundle with the stuck EngineCore
   is written, the server is stopped by process group and started again, the load client
   recovers, and events.jsonl shows detect -> capture -> stop -> port free -> start ->
   healthy. A decoy titled VLLM::EngineCore outside the group survives.
2. With the load gone, the stall is armed again: only watch's --probe meets it (vLLM's gauges
   froze at zero), the probe's timeout makes it an engine stall, and with --max-restarts 1
   used up the storm ends: watch captures, gives up with exit 1 and stops its server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from repro.errors import EXIT_STALL
from repro.server.launcher import port_free
from repro.bundle.reader import bundle_processes
from tests.conftest import free_port
from tests.helpers_watch_real import FAST, end_watch, events, wait_event
from tests.integration.conftest import complete, require_vllm

def storage_for(tmp_path: Path) -> str:
    return f"/dev/shm/repro-watch-test-{os.getpid()}-{tmp_path.name}"


def start_watch(tmp_path: Path, port: int, *args: str) -> tuple[subprocess.Popen[str], Path]:
    out = tmp_path / "run"
    storage = storage_for(tmp_path)
    cmd = [sys.executable, "-m", "repro", "watch", "--serve", "--port", str(port), "--storage", storage,
           "--out", str(out), *FAST, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    return proc, out


@pytest.fixture
def decoy():
    """A process titled like an EngineCore, outside any server's process group."""
    p = subprocess.Popen(["bash", "-c", 'exec -a "VLLM::EngineCore" sleep 900'], start_new_session=True)
    for _ in range(50):
        try:
            if psutil.Process(p.pid).cmdline()[0] == "VLLM::EngineCore":
                break
        except (psutil.NoSuchProcess, IndexError):
            pass
        time.sleep(0.05)
    yield p
    p.kill()
    p.wait()


def test_watch_captures_restarts_and_the_load_recovers_then_gives_up_when_the_stall_comes_back(tmp_path, decoy):
    require_vllm()
    port = free_port()
    control = tmp_path / "inject.control"
    control.write_text("")
    proc, out = start_watch(tmp_path, port, "--inject-control", str(control), "--probe", "--probe-interval", "1",
                            "--probe-timeout", "3", "--max-restarts", "1")
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    done: list[float] = []  # wall times of completed requests

    def load() -> None:  # a client with retries: fails while the server restarts, then recovers
        while not stop.is_set():
            try:
                complete(url, "repro-tiny", [1, 2, 3, 4, 5], timeout=60, max_tokens=16)
                done.append(time.time())
            except Exception:  # noqa: BLE001
                time.sleep(0.5)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    try:
        first = wait_event(out, proc, "healthy")
        first_pid = next(e for e in events(out) if e["event"] == "start")["pid"]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(done) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(done) >= 5, "the load did not run before the stall"
        # Phase 1: the real scheduler blocks inside EngineCore.step under load.
        control.write_text("stall-after=0")
        armed = time.time()
        wait_event(out, proc, "stop", timeout=180)
        control.write_text("release")  # so that the restarted server does not stall at once
        healthy = wait_event(out, proc, "healthy", count=2, timeout=400)
        deadline = time.monotonic() + 60
        while not [t for t in done if t > healthy["t"]] and time.monotonic() < deadline:
            time.sleep(0.2)
        recovered = [t for t in done if t > healthy["t"]]
        assert decoy.poll() is None, "the decoy titled VLLM::EngineCore was killed"
        # Phase 2: no load; the stall comes back and only the probe meets it.
        stop.set()
        for t in threads:
            t.join(70)
        control.write_text("stall-after=0")
        _, err = proc.communicate(timeout=180)
    finally:
        stop.set()
        if proc.poll() is None:
            end_watch(proc)
        shutil.rmtree(storage_for(tmp_path), ignore_errors=True)  # the load's hidden-state files
    assert recovered, "the load client did not recover after the restart"
    assert proc.returncode == EXIT_STALL, err
    assert "giving up: the server stalled again after 1 restart(s)" in err and "stopping it" in err
    ev = events(out)
    kinds = [e["event"] for e in ev if e["event"] not in ("detector", "hook", "hook-done")]
    i = kinds.index("detect")
    assert kinds[i:i + 7] == ["detect", "capture", "stop", "port-free", "gpu-free", "start", "healthy"], kinds
    assert kinds[-4:] == ["detect", "capture", "give-up", "watch-stop"], kinds
    detects = [e for e in ev if e["event"] == "detect"]
    assert [d["class"] for d in detects] == ["engine-stall", "engine-stall"]
    assert detects[0]["t"] - armed >= 4, "declared a stall before the window had passed"
    # under load: frozen gauges with requests running, or (when the engine froze them at zero between
    # max_tokens=1 steps) client requests in flight that the engine never answers
    why = " ".join(detects[0]["reasons"])
    assert "running=" in why or "the engine does not step" in why, detects[0]["reasons"]
    assert any("probe got no answer" in r for r in detects[1]["reasons"]), detects[1]["reasons"]
    # The first bundle: written before the stop, holding this server's processes and the stuck frame.
    cap = next(e for e in ev if e["event"] == "capture")
    assert cap["status"] == "done", cap
    bundle = Path(cap["dir"])
    assert Path(cap["tarball"]).is_file()
    procs_json = bundle_processes(bundle)
    assert decoy.pid not in {p["pid"] for p in procs_json}
    assert any(p["role"] == "engine_core" for p in procs_json)
    stacks = "".join(p.read_text(errors="replace") for p in (bundle / "stacks").rglob("*") if p.is_file())
    assert "repro_injected_scheduler_stall" in stacks
    # Stopped by process group: every pid of the first server is gone; the port was confirmed free.
    stopped = next(e for e in ev if e["event"] == "stop")
    assert stopped["method"] == "process-group" and stopped["pgid"] == first_pid
    assert not [p for p in stopped["pids"] if psutil.pid_exists(p)]
    assert next(e for e in ev if e["event"] == "port-free")["port"] == port
    assert first["t"] < detects[0]["t"]
    # A second bundle was taken before giving up, and watch left nothing running.
    assert [e["status"] for e in ev if e["event"] == "capture"] == ["done", "done"]
    assert port_free("127.0.0.1", port), "watch left its server running after giving up"
    assert decoy.poll() is None
    # the watch ends with its report: both stalls, the restart, and its own timeline.csv
    html = (out / "report.html").read_text()
    assert '<div class="status stall" id="status">gave up: 2 stall(s), 1 restart(s) in ' in html
    assert (out / "timeline.png").stat().st_size > 10_000 and len((out / "timeline.csv").read_text().splitlines()) > 3
    assert "report: " + str(out / "report.html") in err
