"""Targets without vLLM: --url/--pid finds the new server after a restart by the URL's port, not by title;
restart commands are checked and cut off.

--docker (stop and start only the named container, follow its log, a restart command instead of
docker stop) is proven against a real engine in tests/integration/docker/test_watch_container.py.
"""

from __future__ import annotations

import os
import sys

import pytest

from repro.errors import TargetError, UsageError
from repro.watch.servers import ExternalTarget, check_restart_cmd, run_restart_cmd, url_host_port
from tests.helpers_fake_vllm import FakeVllm


@pytest.fixture
def server():
    f = FakeVllm()
    f.lookalike = False
    yield f
    f.close()


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
