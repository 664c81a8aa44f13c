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


def test_a_refused_pause_is_ptrace_and_retried_without_pausing(tmp_path: Path) -> None:
    """py-spy's words when ptrace (the pause) is refused but the memory is readable (a seccomp profile that keeps
    ptrace behind CAP_SYS_PTRACE, measured in Docker): kind 'ptrace', and --nonblocking gets the stacks."""
    exe = fake_pyspy(tmp_path, 'case "$*" in *--nonblocking*) cat "$(dirname "$0")/out.json";; '
                               '*) printf "Error: Failed to get stack traces\\n\\nCaused by:\\n    0: Failed to '
                               'suspend process\\n    1: EPERM: Operation not permitted\\n" >&2; exit 1;; esac')
    (tmp_path / "out.json").write_text(json.dumps(THREADS))
    threads, calls = PySpy(exe).dump_json(123, timeout=5)
    assert [c.mode for c in calls] == ["json", "json-nonblocking"]
    assert calls[0].kind == "ptrace" and calls[1].error is None
    assert threads is not None and threads[0]["frames"][0]["name"] == "f"


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
    assert docker_mod.inspect_command("c1") == ["docker", "inspect", "--type", "container", "c1"]


INSPECT_RUNNING = json.dumps([{"Id": "f" * 64, "Name": "/vllm", "Image": "sha256:" + "a" * 64,
                                "Config": {"Image": "vllm/vllm-openai:v0.20.2", "Env": ["HF_TOKEN=hf_x", "A=b=c"]},
                                "State": {"Status": "running", "Running": True, "Pid": 4242, "ExitCode": 0,
                                          "StartedAt": "2026-12-01T10:00:00Z"}}])
INSPECT_EXITED = INSPECT_RUNNING.replace('"running"', '"exited"').replace('"Running": true', '"Running": false') \
    .replace('"Pid": 4242', '"Pid": 0').replace('"ExitCode": 0', '"ExitCode": 137')


# The docker client's own words (a stand-in for the error wording only: the behaviour against a real engine is
# proven in tests/integration/docker/test_bad_input.py).
@pytest.mark.parametrize("rc,out,err,message", [
    (1, "[]", "Error: No such object: vllm", "no Docker container named 'vllm'"),
    (1, "", "Error response from daemon: No such container: vllm", "no Docker container named 'vllm'"),
    (1, "", "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?",
     "the Docker daemon is not running (cannot connect to it)"),
    (1, "", "WARNING: Error loading config file: /root/.docker/config.json: permission denied\n"
            "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: "
            "Get \"http://%2Fvar%2Frun%2Fdocker.sock/v1.50/containers/vllm/json\": dial unix /var/run/docker.sock: "
            "connect: permission denied",
     "not allowed to talk to the Docker daemon (permission denied on /var/run/docker.sock): run repro as root or "
     "as a member of the docker group"),
])
def test_docker_inspect_failures_are_one_clear_line(rc: int, out: str, err: str, message: str) -> None:
    with pytest.raises(TargetError) as ei:
        docker_mod.parse_inspect("vllm", rc, out, err)
    assert str(ei.value) == message and "\n" not in str(ei.value) and not ei.value.help


def test_docker_inspect_of_a_running_container_gives_its_host_pid_image_and_environment() -> None:
    c = docker_mod.parse_inspect("vllm", 0, INSPECT_RUNNING, "")
    assert (c.name, c.pid, c.running, c.image, c.status) == ("vllm", 4242, True, "vllm/vllm-openai:v0.20.2", "running")
    assert c.describe()["id"] == "f" * 12
    assert docker_mod.env_of(c) == {"HF_TOKEN": "hf_x", "A": "b=c"}


def test_a_stopped_container_is_one_line_naming_its_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker_mod, "inspect", lambda name, timeout=10.0: docker_mod.parse_inspect(
        name, 0, INSPECT_EXITED, ""))
    with pytest.raises(TargetError) as ei:
        docker_mod.running("vllm")
    assert str(ei.value) == ("Docker container 'vllm' is not running (status: exited, exit code 137); "
                             "start it with `docker start vllm`")


def test_a_process_in_another_pid_namespace_is_dumped_by_nsenter_with_its_pid_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN a process the host knows as 4242 and its container as 7 WHEN py-spy is built for it as root
    THEN the host's py-spy runs inside the container's pid and mount namespaces with --pid 7."""
    from repro.capture import procfs

    monkeypatch.setattr(procfs, "in_other_pid_namespace", lambda pid, proc=None: pid == 4242)
    monkeypatch.setattr(procfs, "nspid", lambda pid, proc=None: 7 if pid == 4242 else pid)
    spy = PySpy("/opt/py-spy", enter_namespaces=True)
    assert spy.command(4242, "--native") == ["nsenter", "--target", "4242", "--pid", "--mount", "--", "/opt/py-spy",
                                             "dump", "--pid", "7", "--native"]
    assert spy.command(99, "--json") == ["/opt/py-spy", "dump", "--pid", "99", "--json"]  # a process of ours
    assert PySpy("/opt/py-spy").command(4242) == ["/opt/py-spy", "dump", "--pid", "4242"]  # not asked to enter


def test_nsenter_runs_the_hosts_binary_through_an_open_descriptor(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The container's filesystem has no py-spy: nsenter gets /proc/self/fd/N of the host's binary."""
    from repro.capture import pyspy as pyspy_mod

    seen: dict[str, object] = {}

    def fake_run(cmd: list[str], timeout: float, env: object = None, pass_fds: tuple[int, ...] = ()) -> tuple:
        seen["cmd"], seen["fds"] = cmd, pass_fds
        seen["target"] = os.readlink(f"/proc/self/fd/{pass_fds[0]}")
        return 0, "[]", "", 0.1, False

    exe = fake_pyspy(tmp_path, "exit 0")
    monkeypatch.setattr(pyspy_mod, "run_with_timeout", fake_run)
    spy = PySpy(exe, enter_namespaces=True)
    monkeypatch.setattr(spy, "_namespace_pid", lambda pid: 7)
    res = spy._call(4242, ["--json"], 5, "json")
    fd = seen["fds"][0]  # type: ignore[index]
    assert seen["cmd"] == ["nsenter", "--target", "4242", "--pid", "--mount", "--", f"/proc/self/fd/{fd}", "dump",
                           "--pid", "7", "--json"]
    assert seen["target"] == exe
    assert res.command[6] == exe  # the manifest names the binary, not the descriptor
    with pytest.raises(OSError):
        os.fstat(fd)  # closed again


def test_slow_native_dumps_are_skipped_to_keep_samples_on_schedule(tmp_path: Path) -> None:
    """GIVEN a --native dump that takes 1.2 s and samples 0.5 s apart WHEN sampling THEN the JSON samples stay
    on schedule, the middle rounds skip --native, the last round takes one, and the manifest counts the skips."""
    import subprocess

    from repro.bundle.writer import BundleWriter
    from repro.secrets.redact import Redactor
    from repro.capture.request import CaptureRequest
    from repro.capture.run import _Sampler
    from repro.scenario import CaptureSettings
    from repro.server.procs import VllmProcess

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
