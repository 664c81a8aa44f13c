"""scripts/watchdog.sh against a scripted /metrics endpoint (fast, no vLLM).

The real-vLLM test is tests/integration/test_watchdog_sh_real.py, the one with a real container
tests/integration/docker/test_watch_container.py; these pin down the
decision rules: running > 0 with flat token counters for the window is a stall, an idle
server is not, progress is not; restarts back off and stop after --max-restarts; bad
input fails with one line and the repro exit codes, without running the restart.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from repro.errors import EXIT_OK, EXIT_STALL, EXIT_TARGET, EXIT_USAGE
from tests.helpers_fake_vllm import FakeVllm

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "watchdog.sh"


@pytest.fixture
def fake():
    f = FakeVllm()
    yield f
    f.close()


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def test_running_requests_with_flat_token_counters_for_the_window_are_a_stall(fake):
    fake.running = 31
    r = run("--url", fake.url, "--interval", "0.2", "--window", "2", "--once")
    assert r.returncode == EXIT_STALL, r.stderr
    assert "STALL: running=31" in r.stderr
    held = re.search(r"STALL: .* for (\d+) s", r.stderr)
    assert held and int(held.group(1)) >= 2, r.stderr  # declared only once the bad state held for the window


def test_an_idle_server_is_not_a_stall(fake):
    fake.running = 0
    r = run("--url", fake.url, "--interval", "0.2", "--window", "1", "--duration", "3", "--once")
    assert r.returncode == EXIT_OK, r.stderr
    assert "STALL" not in r.stderr
    assert fake.metrics_reads >= 5  # it really watched


def test_a_server_making_progress_is_not_a_stall(fake):
    fake.running, fake.advance = 31, 5.0
    r = run("--url", fake.url, "--interval", "0.2", "--window", "1", "--duration", "3", "--once")
    assert r.returncode == EXIT_OK, r.stderr
    assert "STALL" not in r.stderr


def test_the_restart_command_runs_after_the_stall_and_the_server_is_watched_again(fake, tmp_path):
    fake.running = 8
    marker = tmp_path / "restarted"
    cmd = f"touch {marker} && curl -fsS {fake.url}/progress >/dev/null"
    r = run("--url", fake.url, "--interval", "0.2", "--window", "1", "--restart-cmd", cmd, "--once")
    assert r.returncode == EXIT_STALL, r.stderr
    assert marker.exists()
    err = r.stderr
    assert err.index("STALL") < err.index("restarting: sh -c") < err.index("server answers again")


def test_restart_storms_back_off_and_give_up_after_max_restarts(fake, tmp_path):
    fake.running = 8  # stalls again at once after every restart
    stamps = tmp_path / "restarts"
    r = run("--url", fake.url, "--interval", "0.2", "--window", "0.5", "--backoff", "1", "--max-restarts", "3",
            "--restart-cmd", f"date +%s.%N >> {stamps}", timeout=120)
    assert r.returncode == EXIT_STALL, r.stderr
    assert "giving up: 3 restarts in the last hour (--max-restarts 3)" in r.stderr
    times = [float(x) for x in stamps.read_text().split()]
    assert len(times) == 3
    gaps = [b - a for a, b in zip(times, times[1:])]
    # back-off 1 s then 2 s, on top of the detection window
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0, gaps
    assert "back-off: waiting 1s" in r.stderr and "back-off: waiting 2s" in r.stderr


def test_metrics_that_stop_answering_for_the_window_lead_to_a_restart(fake, tmp_path):
    marker = tmp_path / "restarted"
    fake.running = 0  # idle, not stalled, while it still answers
    proc = subprocess.Popen(["sh", str(SCRIPT), "--url", fake.url, "--interval", "0.2", "--window", "1",
                             "--startup-grace", "1", "--restart-cmd", f"touch {marker}", "--once"],
                            stderr=subprocess.PIPE, text=True)
    while fake.metrics_reads < 2:  # watching a healthy-looking server first
        time.sleep(0.05)
    fake.broken = True
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_STALL, err
    assert "/metrics does not answer" in err and "/metrics has not answered" in err
    assert marker.exists()
    assert "did not answer within 1s of the restart" in err


def test_an_unreachable_url_fails_with_one_line_and_runs_no_restart(tmp_path):
    marker = tmp_path / "restarted"
    r = run("--url", "http://127.0.0.1:9", "--interval", "0.2", "--window", "1", "--restart-cmd", f"touch {marker}")
    assert r.returncode == EXIT_TARGET
    assert r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("error: cannot read vLLM metrics from http://127.0.0.1:9/metrics")
    assert not marker.exists()


def test_a_page_without_vllm_metrics_is_refused(fake, monkeypatch):
    fake.page = lambda: "# nothing here\nprocess_cpu_seconds_total 1.0\n"  # type: ignore[method-assign]
    r = run("--url", fake.url, "--window", "1")
    assert r.returncode == EXIT_TARGET
    assert "cannot read vLLM metrics" in r.stderr


def test_a_failing_restart_command_exits_3_with_its_exit_code(fake):
    fake.running = 8
    r = run("--url", fake.url, "--interval", "0.2", "--window", "0.5", "--restart-cmd", "exit 7")
    assert r.returncode == EXIT_TARGET
    assert "the restart command failed (exit 7): exit 7" in r.stderr


def test_a_pid_that_does_not_exist_fails_before_watching(fake):
    r = run("--url", fake.url, "--pid", "999999999", "--window", "1")
    assert r.returncode == EXIT_TARGET
    assert "no such process: --pid 999999999" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--window", "soon"], "--window must be a number, got 'soon'"),
    (["--bogus"], "unknown option --bogus (see --help)"),
    (["--url"], "--url needs a value"),
])
def test_bad_options_exit_2_with_one_line(args, message):
    r = run(*args)
    assert r.returncode == EXIT_USAGE
    assert r.stderr.strip() == f"error: {message}"


def test_help_lists_the_exit_codes():
    r = run("--help")
    assert r.returncode == EXIT_OK
    assert "Exit codes" in r.stdout and "--max-restarts" in r.stdout


def test_the_script_is_posix_sh_and_uses_no_bashisms():
    text = SCRIPT.read_text()
    assert text.startswith("#!/bin/sh\n")
    for bashism in ("[[", "$((RANDOM", "function ", "local ", "<<<", "declare ", "${!"):
        assert bashism not in text, bashism
    r = subprocess.run(["dash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
