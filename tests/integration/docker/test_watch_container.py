"""`repro watch --docker` and scripts/watchdog.sh against a real container: detect, capture/dump, restart.

The watchdogs run on the host. A second container runs processes titled VLLM::EngineCore and
VLLM::Worker (a decoy): whatever the watchdogs stop, dump or restart, it is only the container they
were given, never a process found by its title.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from repro.errors import EXIT_OK, EXIT_STALL
from repro.watch.servers import DockerTarget
from repro.bundle.reader import bundle_processes
from tests.helpers_docker import (GB10_CPU, PREFIX, ROOT, Load, VllmContainer, complete, docker, events, inspect,
                                  remove, titles_below, wait_for_event)
from tests.helpers_fake_vllm import FakeVllm

DECOY = """
import os, time, setproctitle
if os.fork() == 0:
    setproctitle.setproctitle("VLLM::Worker")
    time.sleep(3600)
setproctitle.setproctitle("VLLM::EngineCore")
time.sleep(3600)
"""


def state(name: str) -> dict[str, Any]:
    s = inspect(name)["State"]
    return {"pid": s["Pid"], "started": s["StartedAt"], "running": s["Running"]}


@pytest.fixture
def decoy(docker_images: None) -> Iterator[str]:
    """Another container whose processes carry vLLM's titles."""
    name = f"{PREFIX}-decoy"
    docker("run", "-d", "--name", name, "--network", "none", "--no-healthcheck", "--entrypoint", "python3",
           GB10_CPU, "-c", DECOY)
    try:
        import time

        deadline = time.monotonic() + 30
        while sorted(titles_below(state(name)["pid"]).values()) != ["VLLM::EngineCore", "VLLM::Worker"]:
            assert time.monotonic() < deadline, titles_below(state(name)["pid"])
            time.sleep(0.2)
        yield name
    finally:
        remove(name)


def test_watch_docker_captures_then_restarts_only_that_container(vllm_container: VllmContainer, decoy: str,
                                                                  tmp_path: Path) -> None:
    c = vllm_container
    decoy_before, decoy_procs = state(decoy), titles_below(state(decoy)["pid"])
    before = state(c.name)
    old_pids = set(c.processes())
    run = tmp_path / "watch"
    p = subprocess.Popen([sys.executable, "-m", "repro", "watch", "--docker", c.name, "--url", c.url,
                          "--window", "6", "--min-bad", "2", "--startup-grace", "0", "--capture-samples", "2",
                          "--capture-interval", "1", "--no-collect-env", "--out", str(run)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = run / "events.jsonl"
        wait_for_event(log, "attached", timeout=60, proc=p)
        with Load(c.url):  # requests running when the scheduler stops: running > 0, counters flat
            c.inject("stall-after=0")
            wait_for_event(log, "capture", timeout=240, proc=p)
            c.control.write_text("release")  # the restarted engine must serve: disarm it before it starts
        wait_for_event(log, "healthy", timeout=400, proc=p)  # after the restart: the model answers
        assert complete(c.url, timeout=60)
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    assert p.returncode == EXIT_OK, err[-3000:]
    ev = events(run / "events.jsonl")
    kinds = [e["event"] for e in ev]
    order = [kinds.index(k) for k in ("attached", "detect", "capture", "stop", "start", "healthy")]
    assert order == sorted(order), kinds
    detect = next(e for e in ev if e["event"] == "detect")
    assert detect["class"] == "engine-stall"
    assert detect["detection"]["evidence"]["last_stats_line"] is not None  # the container's log was followed
    capture = next(e for e in ev if e["event"] == "capture")
    assert capture["status"] == "done" and capture["verdict"] == "blocked", capture
    stop = next(e for e in ev if e["event"] == "stop")
    assert stop["method"] == "docker stop" and stop["container"] == c.name and set(stop["pids"]) == old_pids
    # the bundle holds the watched container's processes only
    bundle = Path(capture["dir"])
    assert {p["pid"] for p in bundle_processes(bundle)} <= old_pids
    # that container was restarted ...
    after = state(c.name)
    assert after["running"] and after["started"] != before["started"] and after["pid"] != before["pid"]
    assert not old_pids & set(c.processes())
    # ... and the decoy, with the same titles, was not touched
    assert state(decoy) == decoy_before
    assert titles_below(decoy_before["pid"]) == decoy_procs


def test_watchdog_sh_detects_from_metrics_dumps_the_container_and_restarts_it(vllm_container: VllmContainer,
                                                                             decoy: str, tmp_path: Path) -> None:
    c = vllm_container
    before, decoy_before = state(c.name), state(decoy)
    old = c.processes()
    engine = next(pid for pid, title in old.items() if title.startswith("VLLM::EngineCore"))
    dumps = tmp_path / "dumps"
    pyspy = Path(sys.executable).parent / "py-spy"
    try:
        with Load(c.url):  # requests running when the scheduler stops: running > 0, counters flat
            c.inject("stall-after=0")
            r = subprocess.run(["sh", str(ROOT / "scripts" / "watchdog.sh"), "--url", c.url, "--container", c.name,
                                "--interval", "1", "--window", "5", "--pyspy", "--pyspy-cmd", str(pyspy),
                                "--dump-dir", str(dumps), "--once", "--startup-grace", "300"],
                               capture_output=True, text=True, timeout=600)
    finally:
        c.release()
    assert r.returncode == EXIT_STALL, r.stderr[-3000:]
    err = r.stderr
    assert err.index("STALL: running=") < err.index("py-spy: stacks of VLLM::EngineCore") \
        < err.index(f"restarting: docker restart {c.name}") < err.index("server answers again"), err
    engine_dump = dumps.glob(f"pyspy-*-EngineCore-{engine}.txt")
    text = next(engine_dump).read_text()
    assert "repro_injected_scheduler_stall" in text, text[:3000]
    dumped = {int(p.stem.rsplit("-", 1)[1]) for p in dumps.glob("pyspy-*.txt")}
    assert dumped <= set(old), (dumped, old)  # the container's processes only
    after = state(c.name)
    assert after["started"] != before["started"] and after["running"]
    assert state(decoy) == decoy_before


def test_a_restart_command_replaces_docker_stop_and_start(idle_container: str, tmp_path: Path) -> None:
    """--docker NAME --restart-cmd CMD: the command runs instead of docker stop; the container is left alone."""
    server = FakeVllm()
    try:
        marker = tmp_path / "restarted"
        before = state(idle_container)
        t = DockerTarget(idle_container, server.url, restart_cmd=f"touch {marker}")
        t.check()
        assert t.root_pid() == before["pid"] and t.alive() is True
        stopped = t.stop()
        assert stopped["method"] == "restart-cmd" and marker.exists()
        assert t.released(stopped, 5)[0][1]["status"] == "skipped"
        assert state(idle_container) == before
    finally:
        server.close()
