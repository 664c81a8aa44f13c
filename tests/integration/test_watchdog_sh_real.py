"""scripts/watchdog.sh against the REAL vLLM (shared server, injected scheduler stall).

The shell watchdog sees only /metrics: it must tell a real stall (the scheduler blocked
inside EngineCore.step, a request in flight) from a server under load, dump the stuck
EngineCore with py-spy, and run the restart command. The "restart" here releases the
injected stall, so the shared server keeps serving the other tests.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

from repro.errors import EXIT_OK, EXIT_STALL
from tests.integration.conftest import complete

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "watchdog.sh"
PYSPY = str(Path(sys.executable).parent / "py-spy")


def _watchdog(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def test_shell_watchdog_sees_no_stall_while_the_real_server_makes_progress(vllm_server):
    stop = threading.Event()
    done = [0]

    def load() -> None:
        while not stop.is_set():
            complete(vllm_server.url, vllm_server.model, [5, 6, 7, 8], timeout=30, max_tokens=8)
            done[0] += 1

    threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        r = _watchdog("--url", vllm_server.url, "--interval", "0.5", "--window", "3", "--duration", "6", "--once")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert done[0] > 10, "the load did not run, so the test proves nothing"
    assert r.returncode == EXIT_OK, r.stderr
    assert "STALL" not in r.stderr


def test_shell_watchdog_detects_the_injected_stall_from_metrics_dumps_engine_core_and_restarts(vllm_server, tmp_path):
    dumps = tmp_path / "dumps"
    stop = threading.Event()
    done: list[float] = []
    errors: list[Exception] = []

    def load() -> None:  # requests in flight when the scheduler stops: running > 0, counters flat
        while not stop.is_set():
            try:
                complete(vllm_server.url, vllm_server.model, [1, 2, 3, 4], timeout=120, max_tokens=16)
                done.append(time.monotonic())
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
                return

    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    # The "restart" of this test ends the injected stall: the shared server must keep serving.
    restart = f"printf release > {shlex.quote(str(vllm_server.control))}"
    try:
        while len(done) < 5:
            time.sleep(0.1)
        # The stall strikes only on a step that starts with >= 2 requests running, so the published
        # gauge reads running >= 2 when it does. (stall-after=0 may strike on the step after one that
        # finished all three requests at once: the gauge then freezes at running=0, which the shell
        # watchdog cannot tell from an idle server; its header says so.)
        vllm_server.inject("hazard=360000,min_running=2")
        t0 = time.monotonic()
        r = _watchdog("--url", vllm_server.url, "--interval", "0.5", "--window", "4",
                      "--pid", str(vllm_server.server.pid), "--pyspy", "--pyspy-cmd", PYSPY,
                      "--dump-dir", str(dumps), "--restart-cmd", restart, "--startup-grace", "60", "--once")
        elapsed = time.monotonic() - t0
        n_after = len(done)
        time.sleep(2)
        progressed = len(done) - n_after
    finally:
        stop.set()
        vllm_server.release()
        for t in threads:
            t.join(60)
    err = r.stderr
    assert r.returncode == EXIT_STALL, err
    assert elapsed >= 3.5, "detected before the window had passed"
    assert re.search(r"STALL: running=[1-9]\d* with prompt/generation tokens flat", err), err
    # Order of decisions: suspect -> stall -> stacks -> restart -> serving again.
    assert err.index("suspect") < err.index("STALL") < err.index("py-spy: stacks of VLLM::EngineCore") \
        < err.index("restarting: sh -c") < err.index("server answers again"), err
    # py-spy found the stuck frame inside the engine, and only in this server's processes.
    engine_dumps = sorted(dumps.glob("pyspy-*-EngineCore-*.txt"))
    assert len(engine_dumps) == 1, sorted(p.name for p in dumps.iterdir())
    assert "repro_injected_scheduler_stall" in engine_dumps[0].read_text()
    ours = {p.pid for p in vllm_server.server.processes()}
    dumped = {int(p.stem.rsplit("-", 1)[1]) for p in dumps.glob("pyspy-*.txt")}
    assert dumped <= ours, (dumped, ours)
    # The load that was stuck moves again once the stall ends.
    assert not errors, errors
    assert progressed > 0
