"""A watch supervisor on a fake clock: a fake target that stalls on cue, a fake observer, a fake capture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repro.capture.request import Bundle, CaptureRequest
from repro.errors import ServerStartError
from repro.monitor.detector import Observation
from repro.monitor.metrics import MetricsSample
from repro.scenario import CaptureSettings, DetectSettings
from repro.watch.events import EventLog
from repro.watch.policy import PolicySettings
from repro.watch.promstats import WatchMetrics
from repro.watch.supervisor import Supervisor, WatchSettings
from repro.watch.servers import Target


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += max(0.0, s)


class FakeTarget(Target):
    """A server that is healthy for `healthy_for` s after each start, then stalls for good."""

    kind = "serve"
    url = "http://fake:1"

    def __init__(self, clock: Clock, healthy_for: float | None, fail_starts: int = 0) -> None:
        self.clock = clock
        self.healthy_for = healthy_for
        self.fail_starts = fail_starts
        self.actions: list[tuple[str, float]] = []
        self.started_at: float | None = None
        self.starts = 0
        self._model = "m"

    def launch(self) -> dict[str, Any]:
        self.starts += 1
        self.actions.append(("launch", self.clock()))
        return {"pid": 100 + self.starts}

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        if self.fail_starts:
            self.fail_starts -= 1
            self.actions.append(("start-failed", self.clock()))
            raise ServerStartError("vLLM exited with code 1 before it was ready; last lines ...\nmore")
        self.clock.sleep(30)  # a start takes time
        self.started_at = self.clock()
        self.actions.append(("ready", self.clock()))
        return {"model": "m", "seconds": 30.0}

    def stop(self) -> dict[str, Any]:
        self.actions.append(("stop", self.clock()))
        self.started_at = None
        return {"method": "process-group", "pids": [100 + self.starts]}

    def released(self, stopped: dict[str, Any], timeout: float) -> list[tuple[str, dict[str, Any]]]:
        self.actions.append(("released", self.clock()))
        return [("port-free", {"port": 1, "seconds": 0.0})]

    def root_pid(self) -> int | None:
        return 100 + self.starts if self.started_at is not None else None

    def shutdown(self) -> None:
        self.actions.append(("shutdown", self.clock()))

    def stalled(self) -> bool:
        return (self.started_at is not None and self.healthy_for is not None
                and self.clock() - self.started_at >= self.healthy_for)


class FakeObserver:
    def __init__(self, target: FakeTarget, clock: Clock, running_when_healthy: int = 4) -> None:
        self.target, self.clock = target, clock
        self.tokens = 0.0
        self.running_when_healthy = running_when_healthy

    def observe(self) -> Observation:
        if self.target.stalled():
            m = MetricsSample(running=4, waiting=0, prompt_tokens=self.tokens, generation_tokens=0.0)
        else:
            if self.running_when_healthy:
                self.tokens += 10
            m = MetricsSample(running=self.running_when_healthy, waiting=0, prompt_tokens=self.tokens,
                              generation_tokens=0.0)
        return Observation(self.clock(), m, None, True)

    def close(self) -> None:
        pass


def bundle_for(req: CaptureRequest) -> Bundle:
    req.out_dir.mkdir(parents=True)
    tar = req.out_dir.with_suffix(".tar.gz")
    tar.write_bytes(b"x")
    return Bundle(dir=req.out_dir, tarball=tar, manifest={}, verdict={"signature": "sig", "verdict": "blocked"})


def make(tmp_path: Path, target: FakeTarget, clock: Clock, capture_fn=None, **kw: Any) -> Supervisor:
    detect = DetectSettings(poll_interval=1.0, window=10.0, min_bad_evaluations=3, startup_grace=0.0)
    policy = kw.pop("policy", PolicySettings(backoff_initial=10, backoff_max=300, max_restarts=3))
    ws = WatchSettings(detect=detect, policy=policy, capture=CaptureSettings(), capture_budget=kw.pop("budget", 5.0),
                       **kw)
    events = EventLog(tmp_path / "events.jsonl", wall=lambda: clock.t + 1.7e9)
    calls: list[CaptureRequest] = []

    def default_capture(req: CaptureRequest) -> Bundle:
        calls.append(req)
        target.actions.append(("capture", clock()))
        return bundle_for(req)

    sup = Supervisor(target, ws, tmp_path, events, WatchMetrics(), clock=clock, wall=lambda: clock.t + 1.7e9,
                     sleep=clock.sleep, make_observer=lambda t: FakeObserver(target, clock),
                     capture_fn=capture_fn or default_capture)
    sup.capture_calls = calls  # type: ignore[attr-defined]
    return sup
