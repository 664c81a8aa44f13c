"""`repro serve` as a user runs it: starts a real vLLM, reports it, and leaves nothing behind when stopped."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import free_port
from tests.integration.conftest import complete, require_vllm


def start_repro_serve(tmp_path, *extra):
    require_vllm()
    port = free_port()
    cmd = [sys.executable, "-m", "repro", "serve", "--port", str(port), "--out", str(tmp_path / "run"),
           "--storage", f"/dev/shm/repro-test-serve-{os.getpid()}-{port}", *extra]
    # not in its own session: the test signals repro itself, as a terminal or an init system would
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Ctrl-C or SIGTERM"):
            break
    out = "".join(lines)
    if "vLLM ready at" not in out:
        proc.kill()
        pytest.fail(f"repro serve did not get ready:\n{out}\n{proc.stderr.read()}")
    pids = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+(\w+)\s+pid (\d+)$", out, re.M)}
    return proc, port, pids, out


def survivors(pids):
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_stopping_repro_serve_leaves_no_vllm_process_behind(tmp_path, sig, code, request):
    """GIVEN `repro serve` running a real vLLM (stalled for the SIGTERM case, the hardest to stop)
    WHEN it gets SIGTERM or Ctrl-C THEN APIServer, EngineCore and Worker are all gone."""
    extra = ["--inject", "stall-after=0"] if sig == signal.SIGTERM else []
    proc, port, pids, out = start_repro_serve(tmp_path, *extra)
    request.addfinalizer(lambda: shutil.rmtree(f"/dev/shm/repro-test-serve-{os.getpid()}-{port}", ignore_errors=True))
    assert {"EngineCore", "Worker", "APIServer"} <= set(pids), out
    assert f"http://127.0.0.1:{port}" in out and "log:" in out
    if extra:  # make the engine hang before stopping it
        try:
            complete(f"http://127.0.0.1:{port}", "repro-tiny", [1, 2, 3], timeout=3)
        except OSError:
            pass
    proc.send_signal(sig)
    assert proc.wait(60) == code
    deadline = time.time() + 15
    while survivors(pids.values()) and time.time() < deadline:
        time.sleep(0.2)
    assert survivors(pids.values()) == []


def test_a_server_that_fails_to_start_reports_its_log_tail(tmp_path):
    require_vllm()
    r = subprocess.run([sys.executable, "-m", "repro", "serve", "--port", str(free_port()), "--out", str(tmp_path),
                        "--storage", str(tmp_path / "hs"), "--", "--no-such-vllm-flag"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 3
    assert "vLLM exited with code" in r.stderr and "no-such-vllm-flag" in r.stderr
    assert "Traceback (most recent call last)" not in r.stderr.split("last lines of")[0]
