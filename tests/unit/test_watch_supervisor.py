"""The watch loop on a fake clock, with the REAL shared detector and a fake target and capture.

GIVEN a server whose /metrics a script decides (healthy: token counters move; stalled:
running > 0, counters flat), WHEN the supervisor runs, THEN the decisions in events.jsonl
come in the contract's order, capture never blocks a restart, restart storms end in
giving up with back-off between attempts, and the watchdog's counters say what happened.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from repro.capture.request import Bundle, CaptureRequest
from repro.errors import EXIT_OK, EXIT_STALL, ServerStartError, TargetError
from repro.monitor.detector import Observation
from repro.monitor.metrics import MetricsSample
from repro.scenario import CaptureSettings, DetectSettings
from repro.watch.events import EventLog, read_events
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


def kinds(tmp_path: Path) -> list[str]:
    return [e["event"] for e in read_events(tmp_path / "events.jsonl") if e["event"] not in ("detector",)]


def test_a_stall_is_captured_then_the_server_is_stopped_freed_started_and_healthy_again(tmp_path):
    clock = Clock()
    target = FakeTarget(clock, healthy_for=60)
    sup = make(tmp_path, target, clock, duration=150)
    assert sup.run() == EXIT_OK  # ends at --duration
    ev = kinds(tmp_path)
    assert ev[:3] == ["watch-start", "start", "healthy"]
    i = ev.index("detect")
    assert ev[i:i + 6] == ["detect", "capture", "stop", "port-free", "start", "healthy"]
    assert ev[-1] == "watch-stop"
    # capture happened before the stop, with the stalled server's root pid and the detection
    acts = [a for a, _ in target.actions]
    assert acts.index("capture") < acts.index("stop")
    req = sup.capture_calls[0]  # type: ignore[attr-defined]
    assert req.root_pid == 101 and req.reason == "watchdog" and req.url == target.url
    assert req.out_dir == tmp_path / "bundle-001"
    assert req.detection["class"] == "engine-stall"
    assert any(e["event"] == "detect" for e in req.events), "the capture gets the events so far"
    # detection waited for the window: stall began at ready+60, detected >= 10 s later
    detect = next(e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "detect")
    assert detect["detection"]["detection_delay_s"] >= 10
    assert "running=4" in detect["reasons"][0]


def test_capture_that_hangs_never_blocks_the_restart(tmp_path):
    clock = Clock()
    target = FakeTarget(clock, healthy_for=20)
    gate = threading.Event()

    def hanging_capture(req: CaptureRequest) -> Bundle:
        gate.wait(30)
        return bundle_for(req)

    sup = make(tmp_path, target, clock, capture_fn=hanging_capture, budget=0.3, duration=80)
    t0 = time.monotonic()
    try:
        assert sup.run() == EXIT_OK
    finally:
        gate.set()
    assert time.monotonic() - t0 < 5
    events = read_events(tmp_path / "events.jsonl")
    cap = next(e for e in events if e["event"] == "capture")
    assert cap["status"] == "timeout" and "restarting anyway" in cap["why"]
    assert [e["event"] for e in events].count("healthy") >= 2, "the server was restarted anyway"


def test_capture_that_fails_is_recorded_and_the_restart_goes_on(tmp_path):
    clock = Clock()
    target = FakeTarget(clock, healthy_for=20)

    def broken(req: CaptureRequest) -> Bundle:
        raise RuntimeError("py-spy exploded")

    sup = make(tmp_path, target, clock, capture_fn=broken, duration=80)
    assert sup.run() == EXIT_OK
    events = read_events(tmp_path / "events.jsonl")
    cap = next(e for e in events if e["event"] == "capture")
    assert cap["status"] == "failed" and "py-spy exploded" in cap["error"]
    assert "stop" in [e["event"] for e in events]


def test_a_restart_storm_backs_off_and_gives_up_after_max_restarts(tmp_path):
    clock = Clock()
    target = FakeTarget(clock, healthy_for=0)  # stalls at once after every start
    sup = make(tmp_path, target, clock)
    assert sup.run() == EXIT_STALL
    events = read_events(tmp_path / "events.jsonl")
    ev = [e["event"] for e in events]
    assert ev.count("detect") == 4  # the first stall and one after each of 3 restarts
    assert ev.count("start") == 4  # the first start and 3 restarts
    assert [e["seconds"] for e in events if e["event"] == "backoff"] == [10, 20]
    give_up = next(e for e in events if e["event"] == "give-up")
    assert give_up["restarts_in_period"] == 3 and "--max-restarts 3" in give_up["message"]
    assert ev.index("give-up") == ev.index("capture", ev.index("give-up") - 3) + 1, \
        "the last stall is still captured before giving up"
    # back-off really separated the starts on the clock
    launches = [t for a, t in target.actions if a == "launch"]
    stops = [t for a, t in target.actions if a == "stop"]
    assert launches[2] - stops[1] >= 10 and launches[3] - stops[2] >= 20
    assert target.actions[-1][0] == "shutdown"
    assert sup.metrics.state._value.get() == 4  # gave up


def test_a_server_that_does_not_come_back_is_retried_and_counts_toward_giving_up(tmp_path):
    clock = Clock()
    target = FakeTarget(clock, healthy_for=20, fail_starts=0)
    sup = make(tmp_path, target, clock, policy=PolicySettings(backoff_initial=10, max_restarts=2))
    # the first start works; every restart fails
    orig_wait = target.wait_ready

    def wait_ready(timeout: float) -> dict[str, Any]:
        if target.starts > 1:
            target.fail_starts = 1
        return orig_wait(timeout)

    target.wait_ready = wait_ready  # type: ignore[method-assign]
    assert sup.run() == EXIT_STALL
    ev = kinds(tmp_path)
    assert ev.count("start-failed") == 2
    assert ev[-2:] == ["give-up", "watch-stop"]
    assert [e["seconds"] for e in read_events(tmp_path / "events.jsonl") if e["event"] == "backoff"] == [10]


def test_a_healthy_server_is_never_restarted(tmp_path):
    clock = Clock()
    target = FakeTarget(clock, healthy_for=None)
    sup = make(tmp_path, target, clock, duration=600)
    assert sup.run() == EXIT_OK
    ev = kinds(tmp_path)
    assert "detect" not in ev and "stop" not in ev
    assert [a for a, _ in target.actions] == ["launch", "ready", "shutdown"]


def test_an_idle_server_is_not_a_stall(tmp_path):
    clock = Clock()
    target = FakeTarget(clock, healthy_for=None)
    sup = make(tmp_path, target, clock, duration=600)
    sup.make_observer = lambda t: FakeObserver(target, clock, running_when_healthy=0)
    assert sup.run() == EXIT_OK
    assert "detect" not in kinds(tmp_path)


def test_the_watchdogs_own_counters_count_stalls_restarts_and_captures(tmp_path):
    clock = Clock()
    target = FakeTarget(clock, healthy_for=60)
    sup = make(tmp_path, target, clock, duration=150)
    port = sup.metrics.serve(0)
    try:
        assert sup.run() == EXIT_OK
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        sup.metrics.close()
    assert 'repro_watch_stalls_total{class="engine-stall"} 1.0' in text
    assert "repro_watch_restarts_total 1.0" in text
    assert 'repro_watch_captures_total{status="done"} 1.0' in text
    detect = next(e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "detect")
    last = next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("repro_watch_last_stall_timestamp_seconds "))
    assert last == pytest.approx(detect["t"], abs=0.01)


def test_the_hook_gets_the_bundle_path_and_does_not_delay_the_restart(tmp_path):
    clock = Clock()
    target = FakeTarget(clock, healthy_for=20)
    out = tmp_path / "hook.env"
    cmd = f'env | grep ^REPRO_ > {out}; sleep 20'
    sup = make(tmp_path, target, clock, duration=80, on_stall=cmd, hook_timeout=2)
    t0 = time.monotonic()
    assert sup.run() == EXIT_OK
    assert time.monotonic() - t0 < 5, "the restart waited for the hook"
    sup.hook.join(10)  # type: ignore[union-attr]
    env = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert env["REPRO_BUNDLE"] == str(tmp_path / "bundle-001.tar.gz")
    assert env["REPRO_BUNDLE_DIR"] == str(tmp_path / "bundle-001")
    assert env["REPRO_STALL_CLASS"] == "engine-stall"
    assert env["REPRO_CAPTURE_STATUS"] == "done"
    events = read_events(tmp_path / "events.jsonl")
    assert next(e for e in events if e["event"] == "hook")["status"] == "started"
    done = next(e for e in events if e["event"] == "hook-done")
    assert done["status"] == "killed"  # the hook outlived its timeout and was killed (its own group)


def test_a_target_error_during_restart_ends_the_watch_with_the_error_recorded(tmp_path):
    clock = Clock()
    target = FakeTarget(clock, healthy_for=20)

    def released(stopped: dict[str, Any], timeout: float) -> list[tuple[str, dict[str, Any]]]:
        raise TargetError("port 1 on fake is still in use 60 s after the server was stopped")

    target.released = released  # type: ignore[method-assign]
    sup = make(tmp_path, target, clock, duration=80)
    with pytest.raises(TargetError):
        sup.run()
    ev = read_events(tmp_path / "events.jsonl")
    assert ev[-2]["event"] == "error" and "still in use" in ev[-2]["message"]
    assert ev[-1]["event"] == "watch-stop" and ev[-1]["exit_code"] == 3
    assert "start" not in [e["event"] for e in ev[ev.index(ev[-2]) - 3:]]


def test_events_are_numbered_in_order_and_flushed_as_they_happen(tmp_path):
    log = EventLog(tmp_path / "e.jsonl")
    log.write("a", x=1)
    assert read_events(tmp_path / "e.jsonl")[0]["event"] == "a"  # on disk before close
    log.write("b")
    log.close()
    ev = read_events(tmp_path / "e.jsonl")
    assert [e["seq"] for e in ev] == [1, 2]
    assert ev[0]["time"].endswith("Z") and ev[0]["x"] == 1


def test_an_event_after_close_is_kept_in_memory_and_does_not_raise(tmp_path):
    log = EventLog(tmp_path / "e.jsonl")
    log.write("a")
    log.close()
    log.write("hook-done", rc=0)  # a hook that outlived the watch
    assert [e["event"] for e in read_events(tmp_path / "e.jsonl")] == ["a"]
    assert log.recent[-1]["event"] == "hook-done"
