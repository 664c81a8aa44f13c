"""What repro reads about a server it attached to: a real local process listening on a port, its command line
from /proc, and its log when its stdout goes to a file (or the flag that would have captured it)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Iterator

import pytest

from repro import invocation
from repro.server.attached import find_local_server, remote_note, url_is_local
from tests.conftest import free_port


def _serve(stdout: IO[bytes] | int, cwd: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], stdout=stdout,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while find_local_server(url) is None:
        assert proc.poll() is None and time.monotonic() < deadline, "the test server did not listen"
        time.sleep(0.1)
    return proc, url


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait(10)


def test_a_local_server_writing_to_a_file_gives_its_command_line_and_its_log(tmp_path: Path, stop) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "server.log"
    with open(log, "ab") as f:
        proc, url = _serve(f)
    stop.append(proc)
    found = find_local_server(url)
    assert found is not None and found.pid == proc.pid
    assert found.command is not None and found.command[1:3] == ["-m", "http.server"]
    assert found.log_path == str(log) and f"the stdout of pid {proc.pid}" in found.log_note


def test_a_local_server_writing_to_a_pipe_names_the_flag_that_would_capture_its_log(stop) -> None:  # type: ignore[no-untyped-def]
    proc, url = _serve(subprocess.PIPE)
    stop.append(proc)
    found = find_local_server(url)
    assert found is not None and found.log_path is None
    assert "its stdout is pipe:[" in found.log_note and "--log-file FILE" in found.log_note


def test_a_remote_server_is_said_plainly_with_the_flag_that_would_add_its_command() -> None:
    url = "http://10.255.255.1:8000"
    assert not url_is_local(url) and find_local_server(url) is None
    assert remote_note(url).startswith("unknown: the server at 10.255.255.1 is not on this machine")
    assert "--server-command" in remote_note(url)
    assert url_is_local("http://localhost:8000") and url_is_local("http://127.0.0.1:1")


def test_the_recorded_command_line_masks_secret_flag_values() -> None:
    before = invocation._ARGS
    invocation.record(["stress", "--url", "http://127.0.0.1:8000", "--api-key", "sk-verySecret0123456789abcdefgh",
                       "--hf-token=hf_abcdefghijklmnopqrstu", "--concurrency", "32"])
    try:
        assert invocation.command_line() == ["repro", "stress", "--url", "http://127.0.0.1:8000", "--api-key",
                                             "[REDACTED]", "--hf-token=[REDACTED]", "--concurrency", "32"]
    finally:
        invocation._ARGS = before


def test_watch_attached_without_log_file_follows_the_file_the_local_server_writes_to(tmp_path: Path, stop) -> None:  # type: ignore[no-untyped-def]
    """`repro watch --url` on this machine: the server's own output file is followed (the detector sees a fatal
    line, the capture gets the log), as if --log-file had named it."""
    from repro.watch.servers import ExternalTarget

    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "models").write_text('{"data": [{"id": "m"}]}')  # what check() asks of a vLLM server
    log = tmp_path / "server.log"
    with open(log, "ab") as f:
        proc, url = _serve(f, cwd=tmp_path)
    stop.append(proc)
    target = ExternalTarget(url, "true")
    target.check()
    assert target.log_file == str(log) and target.capture_fields()["log_path"] == log
