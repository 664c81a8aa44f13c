"""watch after a hang inside CUDA: stop the server, confirm its GPU memory is freed (stand-in nvidia-smi).

Contract: the stop record says how much GPU memory the server's processes held; an EngineCore deaf to
SIGTERM (a thread spinning in cuEventSynchronize never runs Python's handler) is killed by the group's
SIGKILL; the gpu-free step waits until no stopped pid holds memory and says held before / after; memory
still held after the timeout is a TargetError (no restart on top of it).
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from repro.errors import TargetError
from repro.scenario import ServerSettings
from repro.server.launcher import VllmServer
from repro.watch.servers import ServeTarget, wait_gpu_released
from tests.helpers_gpu import smi_on_path  # noqa: F401  (fixture)
from tests.unit.capture_targets.harness import start_fake


def test_a_server_deaf_to_sigterm_is_stopped_and_its_gpu_memory_seen_freed(smi_on_path, tmp_path: Path) -> None:  # noqa: F811
    srv = start_fake(tmp_path, "cuda-wait", secrets=False)
    try:
        engine = [c.pid for c in psutil.Process(srv.pid).children(recursive=True)]
        assert engine
        smi_on_path(pids=engine)
        target = ServeTarget(ServerSettings(port=srv.port), tmp_path)
        vs = VllmServer(target.settings, tmp_path)
        vs.proc = srv.proc
        target.server = vs
        stopped = target.stop()
        assert stopped["gpu_held_mib"] == 70000.0 * len(engine) and stopped["gpu_held_by"] == sorted(engine)
        assert set(engine) <= set(stopped["stragglers"]) | set(stopped["pids"])
        steps = dict(target.released(stopped, timeout=10.0))
        g = steps["gpu-free"]
        assert g["status"] == "released" and g["held_mib_before"] == 70000.0 * len(engine)
        assert g["held_mib_after"] == 0 and g["memory_used_mib_after"] == [72000.0]
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in engine)
    finally:
        srv.stop()


def test_memory_still_held_after_the_timeout_is_a_target_error(smi_on_path) -> None:  # noqa: F811
    me = psutil.Process().pid
    smi_on_path(pids=[me])
    with pytest.raises(TargetError, match="still held"):
        wait_gpu_released({me}, timeout=0.6)


def test_where_the_pids_are_invisible_the_drop_in_memory_use_is_waited_for(smi_on_path) -> None:  # noqa: F811
    """nvidia-smi lists no process (a container): gpu-free waits until the GPU's memory in use falls below what it
    was before the stop (here it already has: 72000 MiB now against 82000 before)."""
    smi_on_path(pids=[])
    out = wait_gpu_released({123456}, timeout=5.0, held_before=0.0, used_before=[82000.0])
    assert out["status"] == "released" and out["memory_used_mib_after"] == [72000.0] and out["held_mib_after"] == 0
