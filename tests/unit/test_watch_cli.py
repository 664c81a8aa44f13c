"""`repro watch` on bad input: one clear line, a non-zero exit, nothing started, run or killed.

And `--url` mode end to end against a scripted server (no vLLM): the real observer and the
real detector see a stall in /metrics, and a restart command that fails ends the watch
with exit 3 and one line.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from repro.errors import EXIT_TARGET, EXIT_USAGE
from repro.watch.events import read_events
from tests.helpers_fake_vllm import FakeVllm
from tests.helpers_cli import one_line_error, repro_inprocess


def repro(*args: str) -> subprocess.CompletedProcess[str]:
    """`repro watch ARGS` through the CLI's own main() (error lines and exit codes included), in-process."""
    return repro_inprocess("watch", *args)


@pytest.fixture
def stalled():
    """3 requests running, token counters frozen."""
    s = FakeVllm()
    s.running = 3
    s.lookalike = False
    yield s
    s.close()


def test_no_mode_is_a_usage_error():
    one_line_error(repro(), EXIT_USAGE, "say what to watch: --serve, --docker NAME, or --url URL")


def test_serve_cannot_be_combined_with_url():
    one_line_error(repro("--serve", "--url", "http://127.0.0.1:1"), EXIT_USAGE, "cannot be combined with --url")


def test_url_without_a_restart_command_is_refused():
    one_line_error(repro("--url", "http://127.0.0.1:1"), EXIT_USAGE, "--url needs --restart-cmd")


def test_pid_needs_url():
    one_line_error(repro("--serve", "--pid", "1"), EXIT_USAGE, "--pid goes with --url")


def test_vllm_arguments_without_serve_are_refused():
    one_line_error(repro("--url", "http://127.0.0.1:1", "--restart-cmd", "true", "--", "--max-num-seqs", "4"),
                   EXIT_USAGE, "arguments after -- only apply with --serve")


def test_bad_duration_is_a_usage_error():
    one_line_error(repro("--serve", "--window", "soon"), EXIT_USAGE, "cannot parse --window 'soon'")


def test_an_unreachable_url_fails_with_one_line_creates_nothing_and_runs_no_restart(tmp_path):
    marker = tmp_path / "restarted"
    out = tmp_path / "run"
    r = repro("--url", "http://127.0.0.1:9", "--restart-cmd", f"touch {marker}", "--out", str(out))
    one_line_error(r, EXIT_TARGET, "cannot reach http://127.0.0.1:9/v1/models")
    assert not marker.exists() and not out.exists()


def test_a_restart_command_that_is_not_a_command_is_refused_before_watching(stalled, tmp_path):
    r = repro("--url", stalled.url, "--restart-cmd", "no-such-restarter-xyz --now", "--out", str(tmp_path / "r"))
    one_line_error(r, EXIT_USAGE, "'no-such-restarter-xyz' is not a command found on PATH")


def test_a_pid_that_does_not_exist_is_refused(stalled):
    one_line_error(repro("--url", stalled.url, "--pid", "999999999", "--restart-cmd", "true"), EXIT_TARGET,
                   "--pid 999999999: no such process")


def test_a_container_that_does_not_exist_fails_with_one_line_and_nothing_is_stopped(tmp_path):
    marker = tmp_path / "restarted"
    r = repro("--docker", "repro-no-such-container-xyz", "--restart-cmd", f"touch {marker}")
    assert r.returncode == EXIT_TARGET, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    # without a Docker engine here the daemon is what fails; with one, the container name
    assert ("no Docker container named 'repro-no-such-container-xyz'" in lines[0]
            or "Docker daemon is not running" in lines[0] or "docker command is not installed" in lines[0]), lines[0]
    assert not marker.exists()


def test_a_restart_command_that_fails_ends_the_watch_with_exit_3_after_capture_decision(stalled, tmp_path):
    """The real observer and detector see the scripted stall; the restart command then fails."""
    out = tmp_path / "run"
    decoy = subprocess.Popen(["sleep", "60"])  # stands for anything else on the host: must survive
    try:
        r = repro("--url", stalled.url, "--restart-cmd", "echo broken >&2; exit 7", "--window", "1.5",
                  "--poll-interval", "0.2", "--startup-grace", "0", "--no-capture", "--out", str(out))
        assert r.returncode == EXIT_TARGET, r.stderr
        assert "error: the restart command failed (exit 7): echo broken >&2; exit 7: broken" in r.stderr
        assert decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait()
    ev = [e["event"] for e in read_events(out / "events.jsonl")]
    assert ev[:2] == ["watch-start", "attached"]
    assert ev.index("detect") < ev.index("capture") < ev.index("error") < ev.index("watch-stop")
    detect = next(e for e in read_events(out / "events.jsonl") if e["event"] == "detect")
    assert detect["class"] == "engine-stall" and "running=3" in detect["reasons"][0]


def test_metrics_port_in_use_is_a_usage_error(stalled, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = repro("--url", stalled.url, "--restart-cmd", "true", "--metrics-port", str(port),
                  "--out", str(tmp_path / "r"))
    assert r.returncode == EXIT_USAGE, r.stderr
    assert f"error: --metrics-port {port}: cannot listen on 127.0.0.1:{port}" in r.stderr


def test_the_command_is_registered_in_the_cli():
    from repro.cli import cli

    assert cli.get_command(None, "watch").help.startswith("Keep a vLLM server alive")  # type: ignore[union-attr]


def test_help_documents_the_modes_and_exit_codes():
    r = subprocess.run([sys.executable, "-m", "repro", "watch", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for text in ("--serve", "--docker NAME", "--restart-cmd", "--probe", "--max-restarts", "--stall-hook",
                 "--metrics-port", "Exit 1 after giving up"):
        assert text in r.stdout, text


def test_serve_on_a_port_in_use_fails_with_one_line_before_anything_starts(tmp_path):
    import socket

    out = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = repro("--serve", "--port", str(port), "--storage", str(tmp_path / "hs"), "--out", str(out))
    one_line_error(r, EXIT_USAGE, f"port {port} on 127.0.0.1 is already in use")
    assert not out.exists()


def test_serve_with_a_model_directory_that_does_not_exist_fails_before_anything_starts(tmp_path):
    out = tmp_path / "run"
    r = repro("--serve", "--model", "/nonexistent/model-dir", "--out", str(out))
    one_line_error(r, EXIT_USAGE, "--model /nonexistent/model-dir: no such directory")
    assert not out.exists()
