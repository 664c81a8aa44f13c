"""GPU telemetry in a bundle: context/gpu.json (schema repro.gpu v1), with a stand-in nvidia-smi.

Contract: per-GPU utilization, power, memory and temperature are read from nvidia-smi's CSV ([N/A] is
null, a name with commas survives); memory per process names its GPU by index; a few readings are taken
while the stacks are sampled, so a GPU pinned at 100% through the capture shows in every sample; a
machine without nvidia-smi gets no gpu.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from repro.capture import gpu
from repro.capture.pyspy import find_pyspy
from repro.capture.request import CaptureRequest
from repro.capture.run import capture
from repro.scenario import CaptureSettings
from tests.helpers_gpu import smi_on_path  # noqa: F401  (fixture)
from tests.unit.capture_targets.harness import start_fake

TWO = ("0, NVIDIA H200, GPU-aaa, 100, 72000, 143771, 125.30, 40\n"
       "1, NVIDIA H100 80GB HBM3, with, commas, GPU-bbb, [N/A], 10, 81559, [Not Supported], 31\n")


def test_gpu_rows_parse_with_missing_values_and_commas_in_names() -> None:
    g = gpu.parse_gpus(TWO)
    assert g[0] == {"index": 0, "name": "NVIDIA H200", "uuid": "GPU-aaa", "utilization_pct": 100.0,
                    "memory_used_mib": 72000.0, "memory_total_mib": 143771.0, "power_w": 125.3, "temperature_c": 40.0}
    assert g[1]["name"] == "NVIDIA H100 80GB HBM3, with, commas" and g[1]["uuid"] == "GPU-bbb"
    assert g[1]["utilization_pct"] is None and g[1]["power_w"] is None and g[1]["temperature_c"] == 31.0
    assert gpu.parse_gpus("garbage\n\n") == []


def test_processes_name_their_gpu_by_index() -> None:
    apps = gpu.parse_apps("123, GPU-bbb, 70000\n456, GPU-zzz, [N/A]\nNo running processes found\n",
                          {"GPU-aaa": 0, "GPU-bbb": 1})
    assert apps == [{"pid": 123, "gpu_index": 1, "used_memory_mib": 70000.0},
                    {"pid": 456, "gpu_index": None, "used_memory_mib": None}]


def test_report_and_samples_follow_the_shared_format(smi_on_path) -> None:  # noqa: F811
    me = psutil.Process().pid
    smi_on_path(pids=[me])
    smi = gpu.find_smi()
    assert smi is not None
    sampler = gpu.GpuSampler(smi, interval=0.2).start()
    import time

    time.sleep(1.0)
    samples = sampler.stop()
    assert len(samples) >= 2 and samples[0]["t"] == 0 and samples[-1]["t"] > 0
    assert all(s["gpus"][0]["utilization_pct"] == 100.0 for s in samples)
    r = gpu.report(smi, ["NVRM: Xid (PCI:0000:19:00): 79, GPU has fallen off the bus"], samples)
    assert (r["schema"], r["version"]) == ("repro.gpu", 1) and r["taken_at"].endswith("Z")
    assert r["processes"] == [{"pid": me, "gpu_index": 0, "used_memory_mib": 70000.0}]
    assert r["xid"][0].startswith("NVRM: Xid") and "errors" not in r
    assert gpu.memory_of({me, 1}) == {"held_mib": 70000.0, "held_by": [me], "memory_used_mib": [72000.0],
                                      "error": None}


@pytest.mark.skipif(find_pyspy() is None, reason="py-spy not installed")
def test_a_capture_writes_gpu_json_with_samples_from_the_stack_phase(smi_on_path, tmp_path: Path) -> None:  # noqa: F811
    srv = start_fake(tmp_path, "scheduler", secrets=False)
    try:
        smi_on_path(pids=[srv.pid])
        req = CaptureRequest(out_dir=tmp_path / "bundle-001", url=srv.url, root_pid=srv.pid, log_path=srv.log,
                             settings=CaptureSettings(samples=2, interval=1.5, collect_env=False))
        b = capture(req)
    finally:
        srv.stop()
    g = json.loads((b.dir / "context" / "gpu.json").read_text())
    assert g["schema"] == "repro.gpu" and g["gpus"][0]["name"] == "NVIDIA H200"
    assert g["processes"][0]["pid"] == srv.pid and len(g["samples"]) >= 2
    names = [c["name"] for c in json.loads((b.dir / "manifest.json").read_text())["collectors"]]
    assert "gpu telemetry" in names


def test_no_nvidia_smi_no_gpu_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu.find_smi() is None and gpu.memory_of({1}) is None
