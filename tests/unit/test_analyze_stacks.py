"""Analysis contract: stuck frame, blocked/busy/progressing, signature, culprit (synthetic samples)."""

from __future__ import annotations

from typing import Any

from repro.analyze.stacks import ProcessVerdict, culprit, is_wait_primitive, signature, thread_verdict

PY = "/usr/lib/python3.11"
SITE = "/venv/lib/python3.11/site-packages"


def fr(name: str, path: str, line: int = 1) -> dict[str, Any]:
    return {"name": name, "filename": path, "short_filename": path.rsplit("/", 1)[-1], "line": line}


def engine_stack(inner: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Innermost first, as py-spy gives them."""
    return inner + [fr("EngineCore.step", f"{SITE}/vllm/v1/engine/core.py", 674),
                    fr("EngineCoreProc.run_busy_loop", f"{SITE}/vllm/v1/engine/core.py", 1555),
                    fr("BaseProcess._bootstrap", f"{PY}/multiprocessing/process.py", 314)]


WAIT = [fr("Condition.wait", f"{PY}/threading.py", 327), fr("Event.wait", f"{PY}/threading.py", 629)]
HANG = engine_stack(WAIT + [fr("save_hidden_states", f"{SITE}/vllm/connector.py", 88)])


def cpu(*vals: float, dt: float = 2.0) -> list[tuple[float, float]]:
    return [(i * dt, v) for i, v in enumerate(vals)]


def test_stuck_frame_is_the_innermost_frame_that_is_not_a_wait_primitive() -> None:
    v = thread_verdict(1, "MainThread", [HANG, HANG, HANG], cpu(5.0, 5.0, 5.0), "S", "futex_wait", True)
    assert v.verdict == "blocked"
    assert v.stuck_frame == "save_hidden_states (connector.py:88)"
    assert v.signature_frames[:2] == ["save_hidden_states (connector.py)", "EngineCore.step (core.py)"]


def test_same_frames_with_cpu_progress_is_busy() -> None:
    spin = [engine_stack([fr("spin", f"{SITE}/vllm/x.py", n)]) for n in (10, 11, 12)]
    v = thread_verdict(1, "MainThread", spin, cpu(1.0, 2.8, 4.6), "R", "0", True)
    assert v.verdict == "busy" and v.stuck_frame.startswith("spin (x.py:")


def test_stacks_that_only_share_the_outer_loop_are_progressing() -> None:
    a = engine_stack([fr("Scheduler.schedule", f"{SITE}/vllm/sched.py")])[1:]
    b = [fr("MessageQueue.dequeue", f"{SITE}/vllm/shm_broadcast.py"), *engine_stack([])[1:]]
    c = engine_stack([fr("Scheduler.schedule", f"{SITE}/vllm/sched.py")])
    v = thread_verdict(1, "MainThread", [a, b, c], cpu(1.0, 2.5, 4.0), "R", "0", True)
    assert v.verdict == "progressing"
    assert v.stuck_frame == "EngineCoreProc.run_busy_loop (core.py:1555)"


def test_without_two_samples_the_verdict_is_unknown() -> None:
    assert thread_verdict(1, "MainThread", [HANG], cpu(1.0), "S", "x", True).verdict == "unknown"


def test_without_proc_data_identical_stacks_are_blocked() -> None:
    assert thread_verdict(1, "MainThread", [HANG, HANG], [], None, None, True).verdict == "blocked"


def test_wait_primitives() -> None:
    assert is_wait_primitive(fr("Queue.get", f"{PY}/queue.py"))
    assert is_wait_primitive(fr("Poller.poll", f"{SITE}/zmq/sugar/poll.py"))
    assert is_wait_primitive(fr("_block", "/repo/repro/vllm_plugins/fault.py"))
    assert not is_wait_primitive(fr("repro_injected_scheduler_stall", "/repo/repro/vllm_plugins/fault.py"))
    assert not is_wait_primitive(fr("MessageQueue.dequeue", f"{SITE}/vllm/shm_broadcast.py"))


def proc(label: str, role: str, pid: int, stacks: list[list[dict[str, Any]]], tname: str = "MainThread",
         cpu_vals: tuple[float, ...] = (1.0, 1.0, 1.0)) -> ProcessVerdict:
    t = thread_verdict(pid, tname, stacks, cpu(*cpu_vals), "S", "x", True)
    return ProcessVerdict(pid, label, role, f"VLLM::{label}", t.verdict, t.stuck_frame, [t], len(stacks), len(stacks))


def test_signature_ignores_pids_and_line_numbers_and_thread_counters() -> None:
    moved = [dict(f, line=f["line"] + 7) for f in HANG]
    s1, lines = signature([proc("EngineCore", "engine_core", 100, [HANG, HANG])])
    s2, _ = signature([proc("EngineCore", "engine_core", 200, [moved, moved])])
    assert s1 == s2 and len(s1) == 12
    assert lines == ["EngineCore/MainThread: save_hidden_states (connector.py) < EngineCore.step (core.py) < "
                     "EngineCoreProc.run_busy_loop (core.py) < BaseProcess._bootstrap (process.py)"]
    s3, _ = signature([proc("EngineCore", "engine_core", 1, [HANG, HANG], tname="Thread-3")])
    s4, _ = signature([proc("EngineCore", "engine_core", 1, [HANG, HANG], tname="Thread-9")])
    assert s3 == s4


def test_signature_differs_for_another_hang_point_and_ignores_the_api_server() -> None:
    other = engine_stack(WAIT + [fr("Scheduler.schedule", f"{SITE}/vllm/sched.py")])
    api = [fr("run", f"{SITE}/uvloop/__init__.py")]
    s1, _ = signature([proc("EngineCore", "engine_core", 1, [HANG, HANG]), proc("APIServer", "api_server", 2, [api])])
    s2, _ = signature([proc("EngineCore", "engine_core", 1, [other, other])])
    s3, _ = signature([proc("EngineCore", "engine_core", 1, [HANG, HANG])])
    assert s1 != s2 and s1 == s3
    assert signature([]) == (None, [])


def test_culprit_is_the_worker_when_engine_core_only_waits_for_it() -> None:
    ring = engine_stack([fr("SpinCondition.wait", f"{SITE}/vllm/distributed/device_communicators/shm_broadcast.py")])
    write = [fr("repro_injected_write_stall", "/r/repro/vllm_plugins/fault.py"),
             fr("WorkerProc.worker_busy_loop", f"{SITE}/vllm/v1/executor/multiproc_executor.py")]
    c = culprit([proc("EngineCore", "engine_core", 1, [ring, ring]), proc("Worker", "worker", 2, [write, write])])
    assert c is not None and c["process"] == "Worker" and c["stuck_frame"].startswith("repro_injected_write_stall")
    c2 = culprit([proc("EngineCore", "engine_core", 1, [HANG, HANG]), proc("Worker", "worker", 2, [write, write])])
    assert c2 is not None and c2["process"] == "EngineCore"
