"""vLLM general plugin: fault injection inside the real engine.

Registered under the entry-point group ``vllm.general_plugins``, so vLLM loads
it in every process it starts. It does nothing unless ``REPRO_INJECT`` (a spec,
see :mod:`repro.vllm_plugins.faultspec`) or ``REPRO_INJECT_CONTROL`` (a file
re-read at run time) is set. Then it wraps ``Scheduler.schedule`` (runs inside
``EngineCore.step``) and ``safetensors.torch.save_file`` (the hidden-state
write) so that stalls happen in the real code path, under function names that
make the cause obvious in a py-spy dump.

``gpu-hang`` is different: at its trigger the scheduler hook enqueues a kernel
that never finishes (``torch.cuda._sleep`` with a cycle count of centuries) on
the engine thread's current CUDA stream -- the stream vLLM's model runner
launches on -- and returns at once. The engine goes on, queues its forward pass
behind that kernel, and blocks in vLLM's own next CUDA wait (the async output
copy's ``Event.synchronize``, a ``.cpu()`` copy, ...), in native frames such as
``cuEventSynchronize``; no repro frame is on the stack.

``REPRO_INJECT_EVENTS`` (optional) names a JSON-lines file where each injected
stall is recorded with its wall time: the ground truth tests and bisect
calibration check detection against.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import threading
import time

from repro.vllm_plugins import faultspec

logger = logging.getLogger("vllm.repro.fault")

ENV_SPEC = "REPRO_INJECT"
ENV_CONTROL = "REPRO_INJECT_CONTROL"
ENV_EVENTS = "REPRO_INJECT_EVENTS"
POLL = 0.2
_HAZARD_MAX_DT = 1.0  # an idle gap between steps is not engine time under load


class Injector:
    """The state of the injected faults in one process."""

    def __init__(self, spec: faultspec.FaultSpec | None, control: str | None, events: str | None) -> None:
        self.control = control
        self.events = events
        self._control_mtime: float | None = None
        self._lock = threading.Lock()
        self._arm(spec)

    # -- arming -------------------------------------------------------------
    def _arm(self, spec: faultspec.FaultSpec | None) -> None:
        self.spec = spec if spec is not None and not spec.release else None
        self.released = spec is not None and spec.release
        self.first_work: float | None = None
        self.steps_with_work = 0
        self.first_write: float | None = None
        self.last_step: float | None = None
        self.fired: set[int] = set()
        self.onset_reached: set[int] = set()  # hazards whose onset (in steps or seconds) has been logged
        seed = None
        if self.spec:
            hz = self.spec.of_kind("hazard")
            seed = hz[0].seed if hz else None
        self.rng = random.Random(seed)

    def poll_control(self) -> None:
        """Re-read the control file when it changed: a new spec, or `release`."""
        if not self.control:
            return
        try:
            mtime = os.stat(self.control).st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._control_mtime:
            return
        self._control_mtime = mtime
        try:
            with open(self.control) as f:
                text = f.read().strip()
            spec = faultspec.parse(text) if text else None
        except (OSError, faultspec.FaultSpecError) as exc:
            logger.error("repro fault: ignoring control file %s: %s", self.control, exc)
            return
        with self._lock:
            self._arm(spec)
        logger.warning("repro fault: control file armed %r in pid %d", text, os.getpid())

    def is_released(self) -> bool:
        self.poll_control()
        return self.released

    def record(self, event: str, **fields: object) -> None:
        logger.warning("repro fault: %s %s (pid %d)", event, " ".join(f"{k}={v}" for k, v in fields.items()), os.getpid())
        if self.events:
            line = json.dumps({"t": time.time(), "event": event, "pid": os.getpid(), **fields})
            with open(self.events, "a") as f:
                f.write(line + "\n")

    # -- hooks --------------------------------------------------------------
    def on_schedule(self, scheduler: object) -> None:
        self.poll_control()
        spec = self.spec
        if spec is None:
            return
        now = time.monotonic()
        running = len(getattr(scheduler, "running", ()) or ())
        waiting = len(getattr(scheduler, "waiting", ()) or ())
        if running + waiting == 0:
            self.last_step = None
            return
        if self.first_work is None:
            self.first_work = now
        self.steps_with_work += 1
        elapsed = now - self.first_work
        dt = min(now - self.last_step, _HAZARD_MAX_DT) if self.last_step is not None else 0.0
        self.last_step = now
        for i, fault in enumerate(spec.faults):
            if i in self.fired:
                continue
            if fault.kind in ("stall-after", "raise-after", "gpu-hang"):
                due = (fault.steps is not None and self.steps_with_work >= fault.steps) or (
                    fault.seconds is not None and elapsed >= fault.seconds)
                if due and fault.kind == "gpu-hang":
                    self.fired.add(i)
                    repro_injected_gpu_hang(self, spec.text, running, waiting)
                elif due and fault.kind == "raise-after":
                    self.fired.add(i)
                    self.record("raise", kind="raise-after", spec=spec.text, running=running, waiting=waiting)
                    repro_injected_engine_error(spec.text)
                elif due:
                    self.fired.add(i)
                    self.record("stall", kind="stall-after", spec=spec.text, running=running, waiting=waiting)
                    repro_injected_scheduler_stall(self)
            elif fault.kind == "stall-for":
                if elapsed >= fault.after:
                    self.fired.add(i)
                    self.record("slow", kind="stall-for", seconds=fault.seconds, running=running)
                    repro_injected_slow_scheduler(self, fault.seconds or 0.0)
                    self.record("slow-end", kind="stall-for")
            elif fault.kind == "hazard":
                if self.steps_with_work < fault.onset_steps or elapsed < fault.onset_s:
                    continue
                if (fault.onset_steps or fault.onset_s) and i not in self.onset_reached:
                    self.onset_reached.add(i)
                    self.record("onset", kind="hazard", steps=self.steps_with_work, engine_s=round(elapsed, 3),
                                spec=spec.text)
                if running >= fault.min_running and dt > 0 and fault.rate_per_hour:
                    p = 1.0 - math.exp(-fault.rate_per_hour * dt / 3600.0)
                    if self.rng.random() < p:
                        self.fired.add(i)
                        self.record("stall", kind="hazard", spec=spec.text, running=running, waiting=waiting)
                        repro_injected_scheduler_stall(self)
            if self.spec is not spec:  # released and re-armed while we were stalled
                return

    def on_write(self) -> None:
        self.poll_control()
        spec = self.spec
        if spec is None:
            return
        now = time.monotonic()
        if self.first_write is None:
            self.first_write = now
        for i, fault in enumerate(spec.faults):
            if fault.kind == "write-stall" and i not in self.fired and now - self.first_write >= (fault.seconds or 0.0):
                self.fired.add(i)
                self.record("stall", kind="write-stall", spec=spec.text)
                repro_injected_write_stall(self)


def _block(inj: Injector, seconds: float | None) -> None:
    deadline = None if seconds is None else time.monotonic() + seconds
    while not inj.is_released():
        if deadline is not None and time.monotonic() >= deadline:
            return
        time.sleep(POLL)
    inj.record("released")


# Separate, named frames so that py-spy dumps say what happened.
def repro_injected_scheduler_stall(inj: Injector) -> None:
    """Injected by repro: the scheduler never returns (until released)."""
    _block(inj, None)


def repro_injected_slow_scheduler(inj: Injector, seconds: float) -> None:
    """Injected by repro: the scheduler takes `seconds` to return once."""
    _block(inj, seconds)


def repro_injected_write_stall(inj: Injector) -> None:
    """Injected by repro: the hidden-state write never returns (hung storage)."""
    _block(inj, None)


# torch.cuda._sleep spins for this many GPU clock cycles: ~2.3e9 s at 2 GHz, a kernel that never ends.
GPU_HANG_CYCLES = 1 << 62


def repro_injected_gpu_hang(inj: Injector, spec: str, running: int, waiting: int) -> bool:
    """Injected by repro: enqueue a never-ending kernel on this thread's current CUDA stream and return.

    Recorded as ``stall`` (kind gpu-hang) once the kernel is enqueued; without a CUDA device nothing is
    injected and ``gpu-hang-failed`` is recorded instead (the server stays healthy)."""
    try:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device in this process")
        stream = torch.cuda.current_stream()
        torch.cuda._sleep(GPU_HANG_CYCLES)
    except Exception as exc:  # noqa: BLE001 - an injection that cannot happen must not kill the engine
        inj.record("gpu-hang-failed", kind="gpu-hang", spec=spec, error=f"{type(exc).__name__}: {exc}")
        return False
    inj.record("stall", kind="gpu-hang", spec=spec, running=running, waiting=waiting,
               device=getattr(stream, "device_index", None), stream=getattr(stream, "cuda_stream", None))
    return True
class ReproInjectedEngineError(RuntimeError):
    """Raised inside the real scheduler by `raise-after`: EngineCore dies of it like of any real error."""


def repro_injected_engine_error(spec: str) -> None:
    """Injected by repro: the scheduler raises, which kills EngineCore."""
    raise ReproInjectedEngineError(f"injected by repro ({spec}): the engine raises inside Scheduler.schedule")


_INJECTOR: Injector | None = None


def _patch_scheduler(inj: Injector) -> None:
    from vllm.v1.core.sched.scheduler import Scheduler

    orig = Scheduler.schedule
    if getattr(orig, "__repro_patched__", False):
        return

    def schedule(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        inj.on_schedule(self)
        return orig(self, *args, **kwargs)

    schedule.__wrapped__ = orig  # type: ignore[attr-defined]
    schedule.__repro_patched__ = True  # type: ignore[attr-defined]
    Scheduler.schedule = schedule  # type: ignore[method-assign]


def _patch_writes(inj: Injector) -> None:
    import safetensors.torch as st

    orig = st.save_file
    if getattr(orig, "__repro_patched__", False):
        return

    def save_file(*args, **kwargs):  # type: ignore[no-untyped-def]
        inj.on_write()
        return orig(*args, **kwargs)

    save_file.__repro_patched__ = True  # type: ignore[attr-defined]
    st.save_file = save_file
    # Connector modules imported before us bound the original name: patch them too.
    for name, mod in list(sys.modules.items()):
        if mod is not None and "hidden_states" in name and getattr(mod, "save_file", None) is orig:
            mod.save_file = save_file  # type: ignore[attr-defined]


def register() -> None:
    """vLLM calls this in each of its processes."""
    global _INJECTOR
    text = os.environ.get(ENV_SPEC, "").strip()
    control = os.environ.get(ENV_CONTROL) or None
    if _INJECTOR is not None or (not text and not control):
        return
    try:
        spec = faultspec.parse(text) if text else None
    except faultspec.FaultSpecError as exc:
        logger.error("repro fault: %s=%r is not a valid spec (%s); fault injection is off", ENV_SPEC, text, exc)
        return
    inj = Injector(spec, control, os.environ.get(ENV_EVENTS) or None)
    _patch_scheduler(inj)
    _patch_writes(inj)
    _INJECTOR = inj
    logger.info("repro fault: armed %r (control %s) in pid %d", text, control, os.getpid())
