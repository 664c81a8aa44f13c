"""py-spy's text dumps, CUDA waits, the GPU state of a bundle, and the verdicts that use them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from repro.analyze import gpu as gpu_state
from repro.analyze.native import cuda_wait_frame, is_torch_sync, load_dumps, parse_dump
from repro.analyze.stacks import analyze_bundle_dir, thread_verdict

TRACES = Path(__file__).resolve().parents[2] / "traces"

CUDA_DUMP = '''Process 4242: VLLM::EngineCore
Python v3.12.13 (/usr/bin/python3.12)

Thread 4242 (active): "MainThread"
    cuEventSynchronize (libcuda.so.1)
    cudaEventSynchronize (libcudart.so.12)
    THCPEvent_synchronize (libtorch_python.so)
    cfunction_vectorcall_NOARGS (libpython3.12.so.1.0)
    Event.synchronize (torch/cuda/streams.py:231)
    AsyncGPUModelRunnerOutput.get_output (vllm/v1/worker/gpu_model_runner.py:240)
    EngineCore.step_with_batch_queue (vllm/v1/engine/core.py:380)
    0x7f6347e4524a (libc.so.6)
Thread 4250 (idle): "Thread-2 (process_output_sockets)"
    Condition.wait (threading.py:355)
    Queue.get (queue.py:171)
        Arguments:
            block: True
'''


def test_a_real_native_dump_parses_into_threads_with_python_and_native_frames() -> None:
    """GIVEN a dump py-spy --native wrote for a real EngineCore (traces/) THEN every thread and frame is read."""
    text = (TRACES / "scheduler-stall" / "stacks" / "EngineCore-7855" / "sample-0.native.txt").read_text()
    threads = parse_dump(text)
    main = next(t for t in threads if t.name == "MainThread")
    assert main.tid == 7855 and main.state == "idle"
    assert [f.name for f in main.native_tip()] == ["clock_nanosleep", "time_sleep"]
    py = [f for f in main.frames if f.python]
    assert py[0].name == "_block" and py[0].location == "repro/vllm_plugins/fault.py" and py[0].line == 160
    sel = next(f for t in threads for f in t.frames if f.name == "select_poll_poll_impl")
    assert not sel.python and sel.location == "selectmodule.c" and sel.line == 655  # C source with a line
    assert cuda_wait_frame(main) is None


def test_the_cuda_wait_is_the_driver_frame_above_the_python_stack() -> None:
    threads = parse_dump(CUDA_DUMP)
    main = threads[0]
    assert cuda_wait_frame(main).key() == "cuEventSynchronize (libcuda.so.1)"
    assert [f["name"] for f in main.python_frames()][:2] == ["Event.synchronize",
                                                             "AsyncGPUModelRunnerOutput.get_output"]
    assert is_torch_sync(main.python_frames()[0])
    assert len(threads[1].frames) == 2  # --locals lines are not frames


def _proc_dir(tmp: Path, dumps: list[str]) -> Path:
    d = tmp / "stacks" / "EngineCore-4242"
    d.mkdir(parents=True)
    for k, text in enumerate(dumps):
        (d / f"sample-{k}.native.txt").write_text(text)
    return d


def test_load_dumps_keys_by_sample_index(tmp_path: Path) -> None:
    d = _proc_dir(tmp_path, [CUDA_DUMP, CUDA_DUMP])
    (d / "sample-2.native.txt").write_text("(no output: py-spy timed out)\n")
    assert sorted(load_dumps(d)) == [0, 1]


def fr(name: str, path: str, line: int = 1) -> dict[str, Any]:
    return {"name": name, "filename": path, "short_filename": path.rsplit("site-packages/", 1)[-1], "line": line}


SITE = "/venv/lib/python3.12/site-packages"
WAIT_GPU = [fr("Event.synchronize", f"{SITE}/torch/cuda/streams.py", 231),
            fr("AsyncGPUModelRunnerOutput.get_output", f"{SITE}/vllm/v1/worker/gpu_model_runner.py", 240),
            fr("EngineCore.step_with_batch_queue", f"{SITE}/vllm/v1/engine/core.py", 380),
            fr("EngineCoreProc.run_busy_loop", f"{SITE}/vllm/v1/engine/core.py", 1100)]
SPIN = [(0.0, 1.0), (2.0, 3.0), (4.0, 5.0)]  # a whole core


def test_a_thread_spinning_in_torchs_synchronize_is_blocked_in_a_cuda_wait_not_busy() -> None:
    """The driver spin-waits: CPU time alone would say busy."""
    v = thread_verdict(1, "MainThread", [WAIT_GPU] * 3, SPIN, "R", "0", True)
    assert v.verdict == "blocked"
    assert v.stuck_frame == "AsyncGPUModelRunnerOutput.get_output (vllm/v1/worker/gpu_model_runner.py:240)"
    assert v.cuda_wait == "Event.synchronize (torch/cuda/streams.py:231)"
    native = thread_verdict(1, "MainThread", [WAIT_GPU] * 3, SPIN, "R", "0", True, "cuEventSynchronize (libcuda.so.1)")
    assert native.verdict == "blocked" and native.cuda_wait == "cuEventSynchronize (libcuda.so.1)"


def test_a_spinning_thread_without_a_cuda_wait_stays_busy() -> None:
    spin = [fr("spin", f"{SITE}/vllm/x.py"), *WAIT_GPU[2:]]
    v = thread_verdict(1, "MainThread", [spin] * 3, SPIN, "R", "0", True)
    assert v.verdict == "busy" and v.cuda_wait is None


def test_engine_core_waiting_for_input_is_idle() -> None:
    idle = [fr("Condition.wait", "/usr/lib/python3.12/threading.py", 355),
            fr("Queue.get", "/usr/lib/python3.12/queue.py", 180),
            fr("EngineCoreProc._process_input_queue", f"{SITE}/vllm/v1/engine/core.py", 1060),
            fr("EngineCoreProc.run_busy_loop", f"{SITE}/vllm/v1/engine/core.py", 1098)]
    v = thread_verdict(1, "MainThread", [idle] * 3, [(0.0, 1.0), (2.0, 1.0), (4.0, 1.0)], "S", "futex", True)
    assert v.verdict == "idle" and v.stuck_frame.startswith("EngineCoreProc._process_input_queue (")


def test_text_dumps_stand_in_for_failed_json_dumps(tmp_path: Path) -> None:
    """GIVEN a bundle whose JSON dumps of EngineCore all failed but whose --native dumps worked
    THEN the main thread is still judged (blocked in the CUDA wait), not unknown."""
    b = tmp_path / "b"
    shutil.copytree(TRACES / "scheduler-stall", b)
    d = b / "stacks" / "EngineCore-7855"
    text = CUDA_DUMP.replace("4242", "7855")
    for k in range(3):
        s = json.loads((d / f"sample-{k}.json").read_text())
        s["threads"], s["error"] = [], "py-spy did not answer within 10.0 s and was killed"
        (d / f"sample-{k}.json").write_text(json.dumps(s))
        (d / f"sample-{k}.native.txt").write_text(text)
    a = analyze_bundle_dir(b)
    ec = a["processes"][0]
    assert ec["label"] == "EngineCore" and ec["verdict"] == "blocked" and ec["samples_ok"] == 3
    assert a["cuda_wait"] == "cuEventSynchronize (libcuda.so.1)"
    assert a["stuck_frame"].startswith("AsyncGPUModelRunnerOutput.get_output (")


def gpu_file(b: Path, utils: list[float], pids: list[int] | None = None, name: str = "NVIDIA H200") -> None:
    def g(u: float, i: int = 0) -> dict[str, Any]:
        return {"index": i, "name": name, "utilization_pct": u, "power_w": 125.3, "memory_used_mib": 72000.0}

    (b / "context").mkdir(parents=True, exist_ok=True)
    (b / "context" / "gpu.json").write_text(json.dumps({
        "schema": "repro.gpu", "version": 1, "taken_at": "2026-12-01T00:00:00Z",
        "gpus": [g(utils[0]), g(3.0, 1)], "processes": [{"pid": p, "gpu_index": 0} for p in pids or []],
        "xid": [], "samples": [{"t": i, "gpus": [g(u), g(3.0, 1)]} for i, u in enumerate(utils[1:])]}))


@pytest.mark.parametrize("utils,state", [([100, 100, 99], "busy"), ([0, 2, 1], "idle"), ([100, 20, 100], "mixed")])
def test_gpu_state_over_the_readings_of_the_engines_gpu(tmp_path: Path, utils: list[float], state: str) -> None:
    """Only the GPU that holds the engine's memory counts (GPU 1 idles at 3 % beside it)."""
    gpu_file(tmp_path, utils, pids=[7855])
    g = gpu_state.read(tmp_path, {7855})
    assert g is not None and g.state == state and g.readings == 3 and [x["index"] for x in g.gpus] == [0]


def test_no_gpu_file_is_no_gpu_state(tmp_path: Path) -> None:
    assert gpu_state.read(tmp_path) is None and gpu_state.note(None, "x", True) is None


def test_the_gpu_note_tells_a_kernel_hang_from_a_host_side_stall(tmp_path: Path) -> None:
    gpu_file(tmp_path, [100, 100, 100, 100], pids=[42])
    busy = gpu_state.note(gpu_state.read(tmp_path, {42}), "cuEventSynchronize (libcuda.so.1)", True)
    assert "stayed busy in all 4 readings" in busy and "125 W" in busy and "spin-waits" in busy
    gpu_file(tmp_path, [0, 0, 0])
    idle = gpu_state.note(gpu_state.read(tmp_path), None, True)  # no process list: every GPU counts
    assert gpu_state.read(tmp_path).gpus[1]["util_max"] == 3.0
    assert "idle in all 3 readings" in idle and "host side (Python)" in idle


def test_the_bundle_analysis_carries_the_gpu_note(tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(TRACES / "scheduler-stall", b)
    gpu_file(b, [0, 1, 0], pids=[7855])
    a = analyze_bundle_dir(b)
    assert a["gpu"]["state"] == "idle" and "host side (Python)" in a["gpu"]["note"]
    assert a["signature"] == "6a64e85b59ad"  # the GPU reading changes no signature


REAL_026_HANG = Path(__file__).parent / "data" / "native-0.26.0-gpu-hang"


def test_a_thread_stuck_in_the_cuda_driver_in_every_dump_is_a_cuda_wait() -> None:
    """vLLM 0.26.0 on an H200 under gpu-hang (real dumps): EngineCore's main thread sits in libcuda under cuBLAS
    (cuKernelSetAttribute) in all three dumps, with no *Synchronize frame: that driver call is the CUDA wait."""
    from repro.analyze.native import driver_frame
    from repro.analyze.stacks import _cuda_native

    dumps = load_dumps(REAL_026_HANG)
    assert len(dumps) == 3
    main = [t for t in dumps[0] if t.name == "MainThread"][0]
    assert cuda_wait_frame(main) is None and driver_frame(main).name == "cuKernelSetAttribute"
    wait, tip = _cuda_native(main.tid, dumps)
    assert wait == "cuKernelSetAttribute (libcuda.so.580.159.04)" and tip


def test_a_thread_passing_through_different_driver_calls_is_not_stuck() -> None:
    """A busy engine is caught inside libcuda now and then, at different entries: no CUDA wait."""
    from repro.analyze.stacks import _cuda_native

    def dump(entry: str) -> str:
        return (f'Thread 7 (active): "MainThread"\n    0x7f00 (libcuda.so.1)\n    {entry} (libcuda.so.1)\n'
                f'    cublasGemmEx (libcublas.so.13)\n    Linear.forward (vllm/x.py:3)\n')
    dumps = {k: parse_dump(dump(e)) for k, e in enumerate(["cuLaunchKernel", "cuKernelSetAttribute", "cuLaunchKernel"])}
    assert _cuda_native(7, dumps)[0] is None
    same = {k: parse_dump(dump("cuLaunchKernel")) for k in range(3)}
    assert _cuda_native(7, same)[0] == "cuLaunchKernel (libcuda.so.1)"
