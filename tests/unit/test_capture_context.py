"""Context collectors: collect-env cache, log tail and stats lines, storage census, timeline from stress."""

from __future__ import annotations

import calendar
import os
import time
from pathlib import Path

import pytest

from repro.analyze import report
from repro.capture import context, docker as docker_mod
from repro.capture.request import CaptureRequest
from repro.server import procs


def fake_python(tmp: Path) -> tuple[Path, Path]:
    """An interpreter stand-in that answers `-m vllm.collect_env` and counts its runs."""
    calls = tmp / "calls"
    exe = tmp / "bin" / "python3"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\necho run >> {calls}\necho 'vLLM Version : 9.9.9'\necho \"VLLM_X=$VLLM_X\"\n")
    exe.chmod(0o755)
    return exe, calls


def test_collect_env_output_is_cached_per_interpreter_and_environment(tmp_path: Path) -> None:
    """GIVEN a successful collect-env WHEN asked again with the same Python and env THEN it is not rerun;
    a different relevant variable (VLLM_*) runs it again."""
    exe, calls = fake_python(tmp_path)
    cache = tmp_path / "cache"
    a = context.collect_env(str(exe), 10, {"VLLM_X": "1", "PATH": os.environ["PATH"]}, cache_dir=cache)
    b = context.collect_env(str(exe), 10, {"VLLM_X": "1", "PATH": os.environ["PATH"]}, cache_dir=cache)
    assert a["ok"] and a["cached"] is None and "9.9.9" in a["text"]
    assert b["ok"] and b["cached"] and b["text"] == a["text"]
    assert calls.read_text().count("run") == 1
    c = context.collect_env(str(exe), 10, {"VLLM_X": "2", "PATH": os.environ["PATH"]}, cache_dir=cache)
    assert "VLLM_X=2" in c["text"] and calls.read_text().count("run") == 2


def test_failed_collect_env_is_not_cached(tmp_path: Path) -> None:
    exe = tmp_path / "python3"
    exe.write_text("#!/bin/sh\necho 'No module named vllm' >&2\nexit 1\n")
    exe.chmod(0o755)
    r = context.collect_env(str(exe), 10, None, cache_dir=tmp_path / "cache")
    assert not r["ok"] and "No module named vllm" in r["text"]
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_server_python_is_the_shebang_of_the_vllm_script(tmp_path: Path) -> None:
    """`<venv>/bin/vllm serve` runs on `<venv>/bin/python3` (not the base interpreter /proc/PID/exe shows)."""
    exe, _ = fake_python(tmp_path)
    script = tmp_path / "bin" / "vllm"
    script.write_text(f"#!{exe}\nimport sys\n")
    assert procs.server_python(None, [str(script), "serve", "m"]) == str(exe)
    assert procs.server_python(None, [str(exe), "-m", "vllm.entrypoints.openai.api_server"]) == str(exe)


def test_log_tail_keeps_the_end_and_finds_stats_lines_beyond_it(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    stats = "(APIServer pid=1) INFO [loggers.py:335] Engine 000: Avg prompt throughput: 0.0 tokens/s, Running: 31 reqs"
    log.write_text(stats + "\n" + "".join(f"line {i}\n" for i in range(5000)))
    tail, found, info = context.read_log_tail(log, max_bytes=1000)
    assert found == [stats]
    assert tail.endswith("line 4999\n") and "line 0\n" not in tail and len(tail) <= 1000
    assert info["truncated"]


def test_storage_census_counts_waiting_files_and_locks(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"req-{i}.safetensors").write_bytes(b"x" * 100)
        (tmp_path / f"req-{i}.safetensors.lock").write_bytes(b"")
    old = tmp_path / "req-0.safetensors"
    os.utime(old, (time.time() - 600, time.time() - 600))
    c = context.storage_census(str(tmp_path))
    assert c["files_waiting"] == 3 and c["lock_files"] == 3 and c["bytes_waiting"] == 300
    assert c["oldest_age_s"] >= 599 and c["mount"]["fs_type"] and c["bytes_free"] > 0 and c["inodes_total"] >= 0
    assert "error" in context.storage_census(str(tmp_path / "missing"))


def test_mount_of_picks_the_longest_mount_point() -> None:
    mounts = "rootfs / ext4 rw 0 0\ntmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0\nnfs:/x /mnt/hs nfs4 rw,hard 0 0\n"
    assert context.mount_of("/mnt/hs/sub", mounts)["fs_type"] == "nfs4"
    assert context.mount_of("/dev/shm/x", mounts)["options"] == "rw,nosuid,nodev"
    assert context.mount_of("/home/u", mounts)["mount_point"] == "/"


def test_key_metrics_sums_label_sets() -> None:
    text = ('vllm:request_success_total{finished_reason="length"} 3.0\n'
            'vllm:request_success_total{finished_reason="stop"} 2.0\n'
            'vllm:request_success_created{finished_reason="stop"} 1.7e9\n'
            "# HELP x\nvllm:num_requests_running 31.0\n")
    assert context.key_metrics(text) == {"vllm:request_success_total": 5.0, "vllm:num_requests_running": 31.0}


def test_timeline_reads_stress_columns_and_marks_the_stall(tmp_path: Path) -> None:
    """stress's timeline.csv (wall, server_running, ..., *_tokens_total, ok) becomes the plot's series; the
    stall time comes from the detector's since_wall."""
    csv_path = tmp_path / "timeline.csv"
    rows = ["t,wall,server_running,server_waiting,prompt_tokens_total,generation_tokens_total,ok,state"]
    for i in range(6):
        tok = 100 * min(i, 3)
        rows.append(f"{i},{1795891000 + i},{31 if i else 0},0,{tok},{tok // 10},{min(i, 3)},healthy")
    rows.append("6,1795891006,,,,,3,stalled")  # a poll whose /metrics failed
    csv_path.write_text("\n".join(rows) + "\n")
    req = CaptureRequest(out_dir=tmp_path / "b", timeline_csv=csv_path,
                         detection={"since_wall": "2026-11-28T17:16:43.000Z", "since_s": 3.0})
    s = report.timeline_series(req, [])
    assert s["source"] == "timeline.csv" and len(s["t"]) == 7
    assert s["running"][1] == 31 and s["gen_tps"][1] == 10.0 and s["gen_tps"][4] == 0.0
    assert s["completed"][-1] == 3
    since = report.stall_since(req)
    assert since == calendar.timegm((2026, 11, 28, 17, 16, 43, 0, 0, 0))
    assert report.time_to_stall(req.detection) == 3.0
    png = report.render_timeline_png(s, since, "t")
    assert png is not None and png[:4] == b"\x89PNG"


def test_docker_logs_command() -> None:
    assert docker_mod.logs_command("vllm", 100) == ["docker", "logs", "--tail", "100", "vllm"]


def test_gpu_context_reads_nvidia_smi_and_xid_lines(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With an NVIDIA driver: `nvidia-smi -q` output and the kernel's `NVRM: Xid` lines (stand-ins here)."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'Driver Version : 580.1'\n")
    dmesg = tmp_path / "dmesg"
    dmesg.write_text("#!/bin/sh\necho '[1.0] usb 1-1: new device'\n"
                     "echo '[2.0] NVRM: Xid (PCI:0000:01:00): 79, GPU has fallen off the bus.'\n")
    for p in (smi, dmesg):
        p.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    g = context.nvidia(timeout=10)
    assert g["present"] and "580.1" in g["smi"]["text"]
    assert g["xid"]["lines"] == ["[2.0] NVRM: Xid (PCI:0000:01:00): 79, GPU has fallen off the bus."]


def test_no_gpu_means_no_gpu_collectors(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if Path("/dev/nvidiactl").exists():
        pytest.skip("this machine has an NVIDIA driver")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert context.nvidia(timeout=5) == {"present": False}
