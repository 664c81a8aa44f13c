"""Targets without vLLM or a Docker engine: a fake `docker` on PATH records what watch asks of it.

--docker must stop and start only the named container (`docker stop NAME`, `docker start
NAME`), never anything by process name; a restart command replaces both. --url/--pid finds
the new server after a restart by the URL's port, not by title.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repro.errors import TargetError, UsageError
from repro.watch.targets import DockerTarget, ExternalTarget, check_restart_cmd, run_restart_cmd, url_host_port
from tests.unit.test_watchdog_sh import FAKE_DOCKER, FakeVllm



@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    holder = subprocess.Popen(["sleep", "120"])  # the container's "init", a pid on this host
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "docker"
    exe.write_text(FAKE_DOCKER.format(name="vllm-prod", pid=holder.pid))
    exe.chmod(0o755)
    log = tmp_path / "docker.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_LOG", str(log))
    yield log, holder
    holder.kill()
    holder.wait()


@pytest.fixture
def server():
    f = FakeVllm()
    f.lookalike = False
    yield f
    f.close()


def docker_calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_docker_target_stops_and_starts_only_the_named_container(fake_docker, server):
    log, holder = fake_docker
    t = DockerTarget("vllm-prod", server.url)
    t.check()
    assert t.root_pid() == holder.pid and t.alive() is True
    stopped = t.stop()
    assert stopped["method"] == "docker stop" and holder.pid in stopped["pids"]
    started = t.launch()
    assert started["method"] == "docker start"
    ready = t.wait_ready(10)
    assert ready["model"] == "tiny model"
    calls = docker_calls(log)
    assert "stop --time 20 vllm-prod" in calls and "start vllm-prod" in calls
    assert not [c for c in calls if c.split()[0] in ("kill", "rm", "exec")], calls
    assert holder.poll() is None  # watch itself signalled nothing


def test_docker_target_follows_docker_logs_of_the_container(fake_docker, server):
    log, _ = fake_docker
    t = DockerTarget("vllm-prod", server.url)
    t.check()
    src = t.log_source()
    try:
        deadline = time.monotonic() + 10
        lines: list[str] = []
        while not lines and time.monotonic() < deadline:
            lines = src.read_lines()  # type: ignore[union-attr]
            time.sleep(0.1)
    finally:
        src.close()  # type: ignore[union-attr]
    assert lines == ["(APIServer pid=1) INFO a log line"]
    assert "logs -f --tail 0 vllm-prod" in docker_calls(log)


def test_docker_target_with_a_restart_command_runs_it_instead_of_docker_stop(fake_docker, server, tmp_path):
    log, _ = fake_docker
    marker = tmp_path / "restarted"
    t = DockerTarget("vllm-prod", server.url, restart_cmd=f"touch {marker}")
    t.check()
    stopped = t.stop()
    assert stopped["method"] == "restart-cmd" and marker.exists()
    assert t.released(stopped, 5)[0][1]["status"] == "skipped"
    assert not [c for c in docker_calls(log) if c.startswith(("stop", "start"))]


def test_a_container_that_does_not_exist_is_a_target_error_naming_it(fake_docker, server):
    with pytest.raises(TargetError, match="no Docker container named 'nope'"):
        DockerTarget("nope", server.url).check()


def test_external_target_finds_the_new_server_by_its_port_after_the_restart(server, tmp_path):
    """The restart command replaces the process; the new root is whoever listens on the URL's port."""
    t = ExternalTarget(server.url, restart_cmd="true", pid=os.getpid())
    t.check()
    assert t.root_pid() == os.getpid()  # pytest serves the fake here; it is the "server"
    t.stop()
    t.launch()
    assert t.root_pid() is None
    info = t.wait_ready(10)
    assert info["pid"] == os.getpid()


def test_a_failing_restart_command_is_a_target_error_with_its_exit_code_and_output():
    with pytest.raises(TargetError, match=r"the restart command failed \(exit 4\): echo no >&2; exit 4: no"):
        run_restart_cmd("echo no >&2; exit 4", timeout=10)


def test_a_restart_command_that_hangs_is_cut_off():
    with pytest.raises(TargetError, match="did not finish within 1 s"):
        run_restart_cmd("sleep 30", timeout=1)


@pytest.mark.parametrize("cmd, ok", [("true", True), ("systemctl-nope restart vllm", False),
                                     ("cd /srv && ./restart.sh", True), (sys.executable + " -c pass", True)])
def test_restart_commands_are_checked_for_an_existing_program(cmd, ok):
    if ok:
        check_restart_cmd(cmd)
    else:
        with pytest.raises(UsageError, match="is not a command found on PATH"):
            check_restart_cmd(cmd)


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://x:1", "http://"])
def test_urls_must_be_http_with_a_host(url):
    with pytest.raises(UsageError):
        url_host_port(url)
