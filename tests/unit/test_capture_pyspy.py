"""py-spy calls: hard timeouts, the --nonblocking fallback, failure classes, docker command construction."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from repro.capture import docker as docker_mod
from repro.capture.pyspy import PySpy, classify_failure, find_pyspy, run_with_timeout
from repro.errors import TargetError

THREADS = [{"pid": 1, "thread_id": 7, "thread_name": "MainThread", "os_thread_id": 1, "active": False,
            "owns_gil": False, "frames": [{"name": "f", "filename": "/x/a.py", "module": None,
                                           "short_filename": "a.py", "line": 3, "locals": {"secret": "v"},
                                           "is_entry": True}]}]


def fake_pyspy(tmp: Path, body: str) -> str:
    """A py-spy stand-in: a shell script; `$*` holds the arguments repro passed."""
    p = tmp / "py-spy"
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return str(p)


def test_hung_call_is_killed_at_the_timeout() -> None:
    """GIVEN a command that never ends WHEN run with a 0.5 s timeout THEN it is killed within about that time."""
    t0 = time.monotonic()
    rc, out, err, dt, timed_out = run_with_timeout(["sleep", "30"], 0.5)
    assert timed_out and time.monotonic() - t0 < 5 and rc is not None and rc < 0


def test_blocking_dump_that_hangs_falls_back_to_nonblocking(tmp_path: Path) -> None:
    """A blocking dump that times out is retried with --nonblocking; locals are dropped from the result."""
    exe = fake_pyspy(tmp_path, 'case "$*" in *--nonblocking*) cat "$(dirname "$0")/out.json";; *) sleep 30;; esac')
    (tmp_path / "out.json").write_text(json.dumps(THREADS))
    threads, calls = PySpy(exe).dump_json(123, timeout=0.5)
    assert [c.mode for c in calls] == ["json", "json-nonblocking"]
    assert calls[0].timed_out and calls[0].kind == "timeout"
    assert calls[1].error is None
    assert threads is not None and threads[0]["frames"][0]["name"] == "f"
    assert "locals" not in threads[0]["frames"][0]


def test_ptrace_refusal_is_classified_and_not_retried(tmp_path: Path) -> None:
    """The message py-spy prints when ptrace is refused → kind 'ptrace'; a non-blocking retry cannot help."""
    exe = fake_pyspy(tmp_path, "echo \"Permission Denied: Try running again with elevated permissions by going "
                               "'sudo env \\\"PATH=\\$PATH\\\" !!'\" >&2; exit 1")
    threads, calls = PySpy(exe).dump_json(123, timeout=5)
    assert threads is None and len(calls) == 1
    assert calls[0].kind == "ptrace" and "Permission Denied" in (calls[0].error or "")


def test_missing_pyspy_is_classified(tmp_path: Path) -> None:
    spy = PySpy(str(tmp_path / "no-such-py-spy"))
    threads, calls = spy.dump_json(123, timeout=5)
    assert threads is None and calls[0].kind == "missing"
    assert find_pyspy(str(tmp_path / "no-such-py-spy")) is None


def test_real_pyspy_on_a_process_that_is_gone() -> None:
    """The real py-spy against a pid that does not exist: kind 'gone', the error line (not its backtrace)."""
    exe = find_pyspy()
    if exe is None:
        pytest.skip("py-spy not installed")
    pid = 4_000_000 + os.getpid() % 1000  # beyond pid_max on this kernel
    threads, calls = PySpy(exe).dump_json(pid, timeout=10)
    assert threads is None and calls[-1].kind == "gone"
    assert not calls[-1].error.strip().startswith(("10:", "Stack backtrace"))


@pytest.mark.parametrize("text,kind", [
    ("Error: Operation not permitted (os error 1)", "ptrace"),
    ("Permission Denied: Try running again with elevated permissions", "ptrace"),
    ("Error: Failed to get process executable name. Check that the process is running.", "gone"),
    ("Error: something else", "failed"),
])
def test_failure_classes(text: str, kind: str) -> None:
    assert classify_failure(1, text) == kind


def test_docker_exec_command_uses_the_images_pyspy_and_the_container_pid() -> None:
    spy = PySpy(exe=None, docker="vllm-prod")
    assert spy.available
    assert spy.command(7, "--json") == ["docker", "exec", "vllm-prod", "py-spy", "dump", "--pid", "7", "--json"]
    assert docker_mod.exec_pyspy_command("c1", 9, "--native") == ["docker", "exec", "c1", "py-spy", "dump", "--pid",
                                                                  "9", "--native"]
    assert docker_mod.inspect_command("c1")[:2] == ["docker", "inspect"]


@pytest.mark.parametrize("rc,out,err,message", [
    (1, "", "Error: No such object: vllm", "no Docker container named 'vllm'"),
    (0, "false 0\n", "", "Docker container 'vllm' is not running"),
    (1, "", "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?",
     "the Docker daemon is not running (cannot connect to it)"),
])
def test_docker_inspect_failures_are_one_clear_line(rc: int, out: str, err: str, message: str) -> None:
    with pytest.raises(TargetError) as ei:
        docker_mod.parse_inspect("vllm", rc, out, err)
    assert str(ei.value) == message and "\n" not in str(ei.value)


def test_docker_inspect_of_a_running_container_gives_the_host_pid() -> None:
    assert docker_mod.parse_inspect("vllm", 0, "true 4242\n", "") == 4242


def test_slow_native_dumps_are_skipped_to_keep_samples_on_schedule(tmp_path: Path) -> None:
    """GIVEN a --native dump that takes 1.2 s and samples 0.5 s apart WHEN sampling THEN the JSON samples stay
    on schedule, the middle rounds skip --native, the last round takes one, and the manifest counts the skips."""
    import subprocess

    from repro.capture.bundle import BundleWriter
    from repro.capture.redact import Redactor
    from repro.capture.request import CaptureRequest
    from repro.capture.run import _Sampler
    from repro.scenario import CaptureSettings
    from repro.target.procs import VllmProcess

    (tmp_path / "out.json").write_text(json.dumps(THREADS))
    exe = fake_pyspy(tmp_path, 'case "$*" in *--native*) sleep 1.2; echo native;; '
                               '*) cat "$(dirname "$0")/out.json";; esac')
    target = subprocess.Popen(["sleep", "60"])
    try:
        req = CaptureRequest(out_dir=tmp_path / "b", settings=CaptureSettings(samples=4, interval=0.5, pyspy=exe))
        w = BundleWriter(req.out_dir, Redactor())
        sampler = _Sampler(req, w, [VllmProcess(target.pid, os.getpid(), "engine_core", "VLLM::EngineCore")])
        info = sampler.run()
    finally:
        target.kill()
        target.wait()
    natives = sorted(p.name for p in (tmp_path / "b" / "stacks").rglob("*.native.txt"))
    assert natives == ["sample-0.native.txt", "sample-3.native.txt"]
    assert info["native_skipped_to_keep_schedule"] == 2
    times = [json.loads((tmp_path / "b" / "stacks" / f"EngineCore-{target.pid}" / f"sample-{k}.json").read_text())["t"]
             for k in range(4)]
    assert times[3] - times[0] < 3.0  # 1.5 s of schedule + the one slow first native
