"""Bad input to --executor ray: one clear line, exit 2 or 3, and nothing left running."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import free_port
from tests.helpers_cli import repro_subprocess as repro

MODEL = """
[space]
concurrency = [1, 4]
[hazard]
mean_time_to_hang = "1h"
"""


def error_lines(p: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]


def ray_processes(tmp: Path) -> list[int]:
    """Ray processes of the run that used RAY_TMPDIR=tmp (each Ray process names its temp dir)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if str(tmp) in " ".join(p.info["cmdline"] or []):
            out.append(p.pid)
    return out


def ray_env(tmp: Path) -> dict[str, str]:
    return {"RAY_TMPDIR": str(tmp), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ADDRESS": "",
            "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.mark.parametrize("command", ["bisect", "stress"])
def test_unreachable_ray_address_is_one_usage_line_and_exit_2_without_starting_ray(command: str,
                                                                                  tmp_path: Path) -> None:
    pytest.importorskip("ray")
    model = tmp_path / "m.toml"
    model.write_text(MODEL)
    port = free_port()  # nothing listens there
    args = ["--simulate", str(model), "--out", str(tmp_path / "run")] if command == "bisect" else \
        ["--replicas", "2", "--duration", "60", "--out", str(tmp_path / "run")]
    tmp = Path(f"/dev/shm/repro-ray-unit-{os.getpid()}-{command}")
    tmp.mkdir(exist_ok=True)
    t0 = time.time()
    p = repro(command, *args, "--executor", "ray", "--ray-address", f"127.0.0.1:{port}", env=ray_env(tmp))
    assert p.returncode == 2, p.stderr[-2000:]
    errs = error_lines(p)
    assert len(errs) == 1 and f"127.0.0.1:{port}" in errs[0] and "cannot reach" in errs[0], p.stderr
    assert "Traceback" not in p.stderr
    assert time.time() - t0 < 60
    assert ray_processes(tmp) == [] and list(tmp.iterdir()) == []  # Ray was never started
    tmp.rmdir()


def test_more_gpus_than_the_cluster_has_is_one_usage_line_and_the_local_ray_it_started_is_stopped(
        tmp_path: Path) -> None:
    """GIVEN no --ray-address (a local Ray instance on this GPU-less machine) WHEN each trial asks for 2 GPUs
    THEN exit 2 with one line naming the GPUs asked for and found, and no Ray process is left."""
    pytest.importorskip("ray")
    model = tmp_path / "m.toml"
    model.write_text(MODEL)
    tmp = Path(f"/dev/shm/repro-ray-unit-{os.getpid()}")
    tmp.mkdir(exist_ok=True)
    try:
        p = repro("bisect", "--simulate", str(model), "--out", str(tmp_path / "run"), "--executor", "ray",
                  "--ray-gpus", "2", env=ray_env(tmp), timeout=180)
        assert p.returncode == 2, p.stderr[-2000:]
        errs = error_lines(p)
        assert len(errs) == 1 and "2 GPU" in errs[0] and "has 0" in errs[0], p.stderr
        assert list(tmp.iterdir()), "no local Ray instance was started: the check was not exercised"
        deadline = time.time() + 30
        while ray_processes(tmp) and time.time() < deadline:
            time.sleep(1)
        assert ray_processes(tmp) == []
    finally:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


@pytest.mark.parametrize("args, needs", [
    (["stress", "--replicas", "3", "--duration", "60"], "--executor ray"),
    (["stress", "--keep-going", "--duration", "60"], "--executor ray"),
    (["stress", "--ray-gpus", "1", "--duration", "60"], "--executor ray"),
    (["bisect", "--concurrency", "1-4", "--ray-address", "127.0.0.1:6379"], "--executor ray"),
])
def test_ray_only_flags_without_the_ray_executor_are_refused(args: list[str], needs: str, tmp_path: Path) -> None:
    p = repro(*args, "--out", str(tmp_path / "run"))
    assert p.returncode == 2, p.stderr[-2000:]
    errs = error_lines(p)
    assert len(errs) == 1 and needs in errs[0], p.stderr


def test_stress_fleet_refuses_url_because_every_replica_launches_its_own_server(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    p = repro("stress", "--executor", "ray", "--replicas", "2", "--url", "http://127.0.0.1:9", "--duration", "60",
              "--ray-address", f"127.0.0.1:{free_port()}", "--out", str(tmp_path / "run"))
    assert p.returncode == 2 and "drop --url" in p.stderr, p.stderr
