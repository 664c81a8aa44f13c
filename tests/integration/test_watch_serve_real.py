"""`repro watch --serve` against a REAL vLLM on CPU (each test owns its server: watch restarts it).

1. Under load, an injected scheduler stall is detected, a bundle with the stuck EngineCore
   is written, the server is stopped by process group and started again, the load client
   recovers, and events.jsonl shows detect -> capture -> stop -> port free -> start ->
   healthy. A decoy titled VLLM::EngineCore outside the group survives.
2. A server that stalls at once after every start (seen through --probe: no load at all)
   ends the storm: watch gives up after --max-restarts with exit 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from repro.errors import EXIT_OK, EXIT_STALL
from repro.target.launcher import port_free
from repro.watch.events import read_events
from tests.conftest import free_port
from tests.integration.conftest import complete, require_vllm

FAST = ["--poll-interval", "0.5", "--window", "4", "--min-bad", "3", "--startup-grace", "0",
        "--capture-samples", "2", "--capture-interval", "1", "--no-collect-env", "--capture-budget", "60",
        "--startup-timeout", "300"]


def start_watch(tmp_path: Path, port: int, *args: str) -> tuple[subprocess.Popen[str], Path]:
    out = tmp_path / "run"
    storage = f"/dev/shm/repro-watch-test-{os.getpid()}-{tmp_path.name}"
    cmd = [sys.executable, "-m", "repro", "watch", "--serve", "--port", str(port), "--storage", storage,
           "--out", str(out), *FAST, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    return proc, out


def events(out: Path) -> list[dict]:
    p = out / "events.jsonl"
    return read_events(p) if p.exists() else []


def wait_event(out: Path, proc: subprocess.Popen[str], kind: str, count: int = 1, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in events(out) if e["event"] == kind]
        if len(found) >= count:
            return found[count - 1]
        if proc.poll() is not None:
            raise AssertionError(f"watch exited with {proc.returncode} before {kind!r}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {kind!r} event within {timeout} s: {[e['event'] for e in events(out)]}")


def end_watch(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM to watch only (it stops its server's group itself); a kill of its group if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started for watch
        _, err = proc.communicate()
    return proc.returncode, err


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


def test_watch_captures_then_restarts_a_stalled_server_and_the_load_recovers(tmp_path, decoy):
    require_vllm()
    port = free_port()
    control = tmp_path / "inject.control"
    control.write_text("")
    proc, out = start_watch(tmp_path, port, "--inject-control", str(control))
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    done: list[float] = []  # wall times of completed requests
    errors: list[float] = []

    def load() -> None:  # a client with retries: fails while the server restarts, then recovers
        while not stop.is_set():
            try:
                complete(url, "repro-tiny", [1, 2, 3, 4, 5], timeout=60, max_tokens=16)
                done.append(time.time())
            except Exception:  # noqa: BLE001
                errors.append(time.time())
                time.sleep(0.5)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    try:
        first = wait_event(out, proc, "healthy")
        first_pid = next(e for e in events(out) if e["event"] == "start")["pid"]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(done) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(done) >= 20, "the load did not run before the stall"
        control.write_text("stall-after=0")  # the real scheduler blocks inside EngineCore.step
        armed = time.time()
        wait_event(out, proc, "stop", timeout=180)
        control.write_text("release")  # so that the restarted server does not stall again
        healthy = wait_event(out, proc, "healthy", count=2, timeout=300)
        deadline = time.monotonic() + 60
        while not [t for t in done if t > healthy["t"]] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [t for t in done if t > healthy["t"]], "the load client did not recover after the restart"
        assert decoy.poll() is None, "the decoy titled VLLM::EngineCore was killed"
        rc, err = end_watch(proc)
    finally:
        stop.set()
        if proc.poll() is None:
            end_watch(proc)
        for t in threads:
            t.join(70)
    assert rc == EXIT_OK, err
    ev = events(out)
    kinds = [e["event"] for e in ev if e["event"] not in ("detector", "hook", "hook-done")]
    i = kinds.index("detect")
    assert kinds[i:i + 7] == ["detect", "capture", "stop", "port-free", "gpu-free", "start", "healthy"], kinds
    detect = next(e for e in ev if e["event"] == "detect")
    assert detect["class"] == "engine-stall", detect
    assert detect["t"] - armed >= 4, "declared a stall before the window had passed"
    # The bundle: written before the stop, holding this server's processes and the stuck frame.
    cap = next(e for e in ev if e["event"] == "capture")
    assert cap["status"] == "done", cap
    bundle = Path(cap["dir"])
    assert Path(cap["tarball"]).is_file()
    procs_json = json.loads((bundle / "processes.json").read_text())
    pids = {p["pid"] for p in procs_json}
    assert decoy.pid not in pids
    assert any(p["role"] == "engine_core" for p in procs_json)
    stacks = "".join(p.read_text(errors="replace") for p in (bundle / "stacks").rglob("*") if p.is_file())
    assert "repro_injected_scheduler_stall" in stacks
    # Stopped by process group: every pid of the first server is gone; the port was confirmed free.
    stopped = next(e for e in ev if e["event"] == "stop")
    assert stopped["method"] == "process-group" and stopped["pgid"] == first_pid
    assert not [p for p in stopped["pids"] if psutil.pid_exists(p)]
    assert next(e for e in ev if e["event"] == "port-free")["port"] == port
    assert first["t"] < detect["t"]
    assert ev[-1]["event"] == "watch-stop" and port_free("127.0.0.1", port), "watch left its server running"
    assert decoy.poll() is None


def test_watch_gives_up_on_a_server_that_stalls_at_once_after_every_start(tmp_path, decoy):
    """No load at all: the probe's own request meets the stall, and its timeout makes the verdict."""
    require_vllm()
    port = free_port()
    proc, out = start_watch(tmp_path, port, "--inject", "stall-after=0", "--probe", "--probe-interval", "1",
                            "--probe-timeout", "3", "--max-restarts", "1", "--backoff", "2", "--no-capture")
    try:
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            end_watch(proc)
    assert proc.returncode == EXIT_STALL, err
    assert "giving up: the server stalled again after 1 restart(s)" in err
    ev = events(out)
    kinds = [e["event"] for e in ev]
    assert kinds.count("detect") == 2 and kinds.count("start") == 2 and kinds.count("healthy") == 2
    assert kinds.index("give-up") > [i for i, k in enumerate(kinds) if k == "detect"][1]
    assert all(e["class"] == "engine-stall" for e in ev if e["event"] == "detect")
    assert any("probe" in r for e in ev if e["event"] == "detect" for r in e["reasons"]), \
        [e["reasons"] for e in ev if e["event"] == "detect"]
    assert port_free("127.0.0.1", port), "watch left its server running after giving up"
    assert decoy.poll() is None
