"""The injector's decisions inside vLLM, driven with a stand-in scheduler (no vLLM needed).

Contract: a fault fires only at the point its spec says, blocks in a frame named after
it, and a `release` written to the control file ends every stall.
"""

import json
import threading
import time
from types import SimpleNamespace

import pytest

from repro.vllm_plugins import fault, faultspec


def sched(running: int, waiting: int = 0) -> SimpleNamespace:
    return SimpleNamespace(running=[object()] * running, waiting=[object()] * waiting)


@pytest.fixture
def control(tmp_path):
    return tmp_path / "control"


def run_in_thread(fn, *args):
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def release(control, inj):
    control.write_text("release")


def test_stall_after_steps_blocks_on_the_nth_step_with_work_until_released(control, tmp_path):
    events = tmp_path / "events.jsonl"
    inj = fault.Injector(faultspec.parse("stall-after=3steps"), str(control), str(events))
    inj.on_schedule(sched(0))  # no work: does not count
    inj.on_schedule(sched(1))
    inj.on_schedule(sched(1))
    t = run_in_thread(inj.on_schedule, sched(2))
    time.sleep(0.5)
    assert t.is_alive(), "the third step with work must block"
    control.write_text("release")
    t.join(5)
    assert not t.is_alive()
    assert '"kind": "stall-after"' in events.read_text()


def test_stall_for_returns_by_itself(control):
    inj = fault.Injector(faultspec.parse("stall-for=0.4"), str(control), None)
    t0 = time.monotonic()
    inj.on_schedule(sched(1))
    assert 0.35 <= time.monotonic() - t0 < 3
    t0 = time.monotonic()
    inj.on_schedule(sched(1))  # fires once only
    assert time.monotonic() - t0 < 0.1


def test_hazard_never_fires_below_min_running(control):
    inj = fault.Injector(faultspec.parse("hazard=1000000,min_running=4,seed=1"), str(control), None)
    for _ in range(200):
        inj.on_schedule(sched(3))
        time.sleep(0.001)
    assert not inj.fired


def test_hazard_fires_at_or_above_min_running(control):
    inj = fault.Injector(faultspec.parse("hazard=10000000,min_running=4,seed=1"), str(control), None)
    inj.on_schedule(sched(4))
    time.sleep(0.05)
    t = run_in_thread(inj.on_schedule, sched(4))
    time.sleep(0.5)
    assert t.is_alive() and inj.fired
    control.write_text("release")
    t.join(5)
    assert not t.is_alive()


def _stall_within_two_steps(inj: fault.Injector) -> threading.Thread:
    """The next step on a thread; if it returned (the first step after an onset may have no elapsed engine time
    yet), one more: the thread of the step that is stalled, or of the one that returned."""
    t = run_in_thread(inj.on_schedule, sched(2))
    time.sleep(0.2)
    if not t.is_alive():
        t = run_in_thread(inj.on_schedule, sched(2))
        time.sleep(0.5)
    return t


def test_hazard_with_an_onset_never_fires_before_that_many_steps_then_fires_and_logs_the_onset(control, tmp_path):
    """GIVEN hazard=R,onset=50 with a rate that fires at once WHEN the engine steps with work THEN no stall
    in the first 49 steps (an engine that has not aged), the onset is recorded at step 50, then it stalls."""
    events = tmp_path / "events.jsonl"
    inj = fault.Injector(faultspec.parse("hazard=100000000,min_running=1,seed=2,onset=50"), str(control), str(events))
    for _ in range(49):
        inj.on_schedule(sched(2))
        time.sleep(0.002)
    assert not inj.fired and not events.exists()
    t = _stall_within_two_steps(inj)  # step 50: the onset
    assert t.is_alive() and inj.fired
    recs = [line for line in events.read_text().splitlines()]
    assert '"event": "onset"' in recs[0] and '"steps": 50' in recs[0]
    assert '"event": "stall"' in recs[1]
    control.write_text("release")
    t.join(5)
    assert not t.is_alive()


def test_hazard_with_an_onset_in_seconds_never_fires_before_that_much_engine_time(control, tmp_path):
    """GIVEN hazard=R,onset=0.4s with a rate that fires at once WHEN the engine steps with work THEN no stall
    for the first 0.4 s however many steps run, the onset is recorded with its engine time, then it stalls."""
    events = tmp_path / "events.jsonl"
    inj = fault.Injector(faultspec.parse("hazard=100000000,min_running=1,seed=2,onset=0.4s"), str(control), str(events))
    t0 = time.monotonic()
    steps = 0
    while time.monotonic() - t0 < 0.3:
        inj.on_schedule(sched(2))
        steps += 1
        time.sleep(0.002)
    assert steps > 50 and not inj.fired and not events.exists()
    time.sleep(0.15)
    t = _stall_within_two_steps(inj)
    assert t.is_alive() and inj.fired
    recs = [json.loads(line) for line in events.read_text().splitlines()]
    assert recs[0]["event"] == "onset" and recs[0]["engine_s"] >= 0.4
    assert recs[1]["event"] == "stall"
    control.write_text("release")
    t.join(5)
    assert not t.is_alive()


def test_control_file_arms_a_spec_at_run_time(control):
    inj = fault.Injector(None, str(control), None)
    inj.on_schedule(sched(5))
    assert not inj.fired
    control.write_text("stall-for=0.3")
    t0 = time.monotonic()
    inj.on_schedule(sched(5))
    assert time.monotonic() - t0 >= 0.25


def test_write_stall_blocks_in_the_write_until_released(control):
    inj = fault.Injector(faultspec.parse("write-stall"), str(control), None)
    t = run_in_thread(inj.on_write)
    time.sleep(0.4)
    assert t.is_alive()
    control.write_text("release")
    t.join(5)
    assert not t.is_alive()


def test_injected_frames_carry_names_that_say_what_happened():
    names = {fault.repro_injected_scheduler_stall.__name__, fault.repro_injected_write_stall.__name__}
    assert names == {"repro_injected_scheduler_stall", "repro_injected_write_stall"}


def test_plugin_is_inert_without_its_environment(monkeypatch):
    monkeypatch.delenv("REPRO_INJECT", raising=False)
    monkeypatch.delenv("REPRO_INJECT_CONTROL", raising=False)
    monkeypatch.setattr(fault, "_INJECTOR", None)
    fault.register()
    assert fault._INJECTOR is None


class _FakeCuda:
    """torch.cuda as gpu-hang uses it: is_available, current_stream, _sleep (records its cycle counts)."""

    def __init__(self, available: bool) -> None:
        self.available = available
        self.sleeps: list[int] = []
        self.stream = SimpleNamespace(device_index=0, cuda_stream=1234)

    def is_available(self) -> bool:
        return self.available

    def current_stream(self) -> SimpleNamespace:
        return self.stream

    def _sleep(self, cycles: int) -> None:
        self.sleeps.append(cycles)


@pytest.fixture
def fake_torch(monkeypatch):
    def make(available: bool = True) -> _FakeCuda:
        cuda = _FakeCuda(available)
        monkeypatch.setitem(__import__("sys").modules, "torch", SimpleNamespace(cuda=cuda))
        return cuda

    return make


def test_gpu_hang_enqueues_a_never_ending_kernel_on_the_current_stream_and_returns(control, tmp_path, fake_torch):
    """The hang is on the GPU, not in a Python frame: on the 2nd step with work one kernel of GPU_HANG_CYCLES is
    enqueued on the current stream, the scheduler hook returns at once, and it never fires again."""
    cuda = fake_torch()
    events = tmp_path / "events.jsonl"
    inj = fault.Injector(faultspec.parse("gpu-hang=2steps"), str(control), str(events))
    inj.on_schedule(sched(1))
    assert cuda.sleeps == []
    t0 = time.monotonic()
    inj.on_schedule(sched(3, 1))
    inj.on_schedule(sched(3))
    assert time.monotonic() - t0 < 1.0
    assert cuda.sleeps == [fault.GPU_HANG_CYCLES] and fault.GPU_HANG_CYCLES / 2e9 > 1e8  # > 3 years at 2 GHz
    rec = [json.loads(x) for x in events.read_text().splitlines()]
    assert [(r["event"], r["kind"], r["running"], r["device"], r["stream"]) for r in rec] == [
        ("stall", "gpu-hang", 3, 0, 1234)]


def test_gpu_hang_without_cuda_injects_nothing_and_says_so(control, tmp_path, fake_torch):
    cuda = fake_torch(available=False)
    events = tmp_path / "events.jsonl"
    inj = fault.Injector(faultspec.parse("gpu-hang"), str(control), str(events))
    inj.on_schedule(sched(1))
    inj.on_schedule(sched(1))
    assert cuda.sleeps == []
    rec = [json.loads(x) for x in events.read_text().splitlines()]
    assert [r["event"] for r in rec] == ["gpu-hang-failed"] and "no CUDA device" in rec[0]["error"]
def test_raise_after_steps_raises_a_named_exception_from_a_named_frame_once(tmp_path):
    """GIVEN raise-after=2steps WHEN the second step with work comes THEN ReproInjectedEngineError is raised from
    `repro_injected_engine_error` (what EngineCore dies of), the event is recorded, and it fires only once."""
    import traceback

    events = tmp_path / "events.jsonl"
    inj = fault.Injector(faultspec.parse("raise-after=2steps"), None, str(events))
    inj.on_schedule(sched(0))
    inj.on_schedule(sched(1))
    with pytest.raises(fault.ReproInjectedEngineError, match=r"injected by repro \(raise-after=2steps\)") as ei:
        inj.on_schedule(sched(1))
    assert traceback.extract_tb(ei.tb)[-1].name == "repro_injected_engine_error"
    assert [json.loads(x)["event"] for x in events.read_text().splitlines()] == ["raise"]
    inj.on_schedule(sched(1))  # fired: the next step goes on
