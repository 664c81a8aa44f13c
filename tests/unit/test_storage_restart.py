"""Issue 8: watch restarts a server that died of its hidden-state store only once space is back, or says why not.

The decision (:class:`repro.watch.recovery.StorageRecovery`) is replayed on recorded sequences of
filesystem readings with the time given; the supervisor runs on a fake clock with a fake statvfs
and a fake target whose log shows ENOSPC -- nothing sleeps.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from repro.errors import EXIT_OK, EXIT_STALL, UsageError
from repro.monitor.detector import Observation
from repro.monitor.metrics import MetricsSample
from repro.scenario import CaptureSettings, DetectSettings
from repro.storage.census import CensusSnapshot
from repro.watch.events import EventLog, read_events
from repro.watch.policy import PolicySettings
from repro.watch.promstats import WatchMetrics
from repro.watch.recovery import (GIVE_UP, RESTART, WAIT, FsReading, MinFree, RecoverySettings, StorageRecovery,
                                  measured_rates)
from repro.watch.supervisor import Supervisor, WatchSettings
from tests.helpers_watch import Clock, FakeTarget, bundle_for

MB = 1_000_000
NOSPACE = {"kind": "no-space", "line": "SafetensorError: I/O error: No space left on device (os error 28)",
           "in_hidden_state_write": "yes"}


def fs(free: int, total: int = 4 * MB, free_inodes: int = 10_000, total_inodes: int = 10_000,
       read_only: bool = False, writable: bool = True) -> FsReading:
    return FsReading(free, total, free_inodes, total_inodes, read_only, writable)


def replay(rec: StorageRecovery, seq: list[tuple[float, FsReading | None]]) -> list[tuple[str, bool]]:
    """(action, announced) per reading, stopping at the first restart or give-up."""
    out = []
    for t, r in seq:
        d = rec.decide(t, r, None if r is not None else "FileNotFoundError: gone")
        out.append((d.action, d.announce))
        if d.action != WAIT:
            break
    return out


# -- the decision on recorded sequences --------------------------------------------------------------------------

def test_a_full_store_waits_and_restarts_once_the_default_5_percent_is_free() -> None:
    rec = StorageRecovery(RecoverySettings(), NOSPACE, "/store", started=0.0)
    seq = [(t, fs(0)) for t in range(0, 125, 5)] + [(125.0, fs(150_000)), (130.0, fs(250_000)), (135.0, fs(MB))]
    got = replay(rec, seq)
    # announced at the first wait and then once a minute, never on every poll
    assert [a for a, _ in got[:-1]] == [WAIT] * (len(got) - 1)
    assert [t for (t, _), (_, ann) in zip(seq, got) if ann and _ == WAIT] == [0, 60, 120]
    assert got[-1] == (RESTART, True)
    assert seq[len(got) - 1][0] == 130.0  # 250 kB >= 5% of 4 MB; 150 kB was not enough
    d = rec.decide(130.0, fs(250_000))
    assert "storage recovered" in d.message and d.fields["need_bytes"] == 200_000


def test_the_need_grows_with_the_write_rate_measured_before_the_death_capped_at_half_the_filesystem() -> None:
    s = RecoverySettings(runway=600.0)
    small = StorageRecovery(s, NOSPACE, "/store", 0.0, bytes_per_s=1_000)  # 10 min at 1 kB/s = 600 kB
    assert small.need(fs(0)).bytes == 600_000 and "at the 1 kB/s" in small.need(fs(0)).basis
    assert replay(small, [(0, fs(400_000)), (5, fs(650_000))]) == [(WAIT, True), (RESTART, True)]
    fast = StorageRecovery(s, NOSPACE, "/store", 0.0, bytes_per_s=100_000)  # 60 MB > half of a 4 MB store
    need = fast.need(fs(0))
    assert need.bytes == 2 * MB and "capped at half the filesystem" in need.basis
    assert replay(fast, [(0, fs(1_900_000)), (5, fs(2_000_000))]) == [(WAIT, True), (RESTART, True)]


def test_space_that_never_comes_back_ends_in_giving_up_with_the_reason_and_the_remedy() -> None:
    rec = StorageRecovery(RecoverySettings(max_wait=600.0), NOSPACE, "/store", started=100.0)
    got = replay(rec, [(100.0 + t, fs(10_000)) for t in range(0, 700, 5)])
    assert got[-1] == (GIVE_UP, True) and len(got) == 121  # the reading at 600 s of waiting
    d = rec.decide(700.0, fs(10_000))
    assert d.message.startswith("will not restart: the server died of no-space in its hidden-state store /store")
    assert "10 kB free, 200 kB needed" in d.message and "--reap-orphans-older-than" in d.message
    with_reaper = StorageRecovery(RecoverySettings(), NOSPACE, "/store", 0.0, reaping=True)
    assert "--reap-orphans-older-than" not in with_reaper.decide(600.0, fs(0)).message


def test_enough_bytes_but_no_inodes_is_still_full() -> None:
    rec = StorageRecovery(RecoverySettings(), NOSPACE, "/store", 0.0)
    assert replay(rec, [(0, fs(3 * MB, free_inodes=50)), (5, fs(3 * MB, free_inodes=200))]) == \
        [(WAIT, True), (RESTART, True)]  # 1% of 10,000 inodes = 100
    assert "inodes free" in rec.decide(1, fs(3 * MB, free_inodes=50)).message
    no_count = StorageRecovery(RecoverySettings(), NOSPACE, "/store", 0.0)  # a filesystem that counts no inodes
    assert no_count.decide(0, fs(3 * MB, free_inodes=0, total_inodes=0)).action == RESTART


def test_a_read_only_store_waits_for_writability_not_for_bytes() -> None:
    cause = {**NOSPACE, "kind": "read-only"}
    rec = StorageRecovery(RecoverySettings(), cause, "/store", 0.0)
    assert replay(rec, [(0, fs(3 * MB, read_only=True)), (5, fs(0))]) == [(WAIT, True), (RESTART, True)]
    assert "mounted read-only" in rec.decide(1, fs(MB, read_only=True)).message
    perm = StorageRecovery(RecoverySettings(), {**NOSPACE, "kind": "permission"}, "/store", 0.0)
    assert replay(perm, [(0, fs(MB, writable=False)), (5, fs(MB))]) == [(WAIT, True), (RESTART, True)]


def test_an_unreadable_store_is_waited_for_not_restarted_into() -> None:
    rec = StorageRecovery(RecoverySettings(), NOSPACE, "/store", 0.0)
    assert replay(rec, [(0, None), (5, None), (10, fs(MB))]) == [(WAIT, True), (WAIT, False), (RESTART, True)]
    assert "cannot read the store's filesystem (FileNotFoundError: gone)" in rec.decide(15, None, "FileNotFoundError: gone").message


def test_a_min_free_larger_than_the_filesystem_gives_up_at_once() -> None:
    rec = StorageRecovery(RecoverySettings(min_free=MinFree(bytes=10 * MB)), NOSPACE, "/store", 0.0)
    d = rec.decide(0.0, fs(3 * MB))
    assert d.action == GIVE_UP and "more than the whole filesystem" in d.message


def test_min_free_is_a_size_or_a_percentage_and_anything_else_is_one_usage_error() -> None:
    assert MinFree.parse("5%").of(4 * MB) == 200_000
    assert MinFree.parse("2GB").of(4 * MB) == 2_000_000_000
    for bad in ("0%", "150%", "lots", "0"):
        with pytest.raises(UsageError):
            MinFree.parse(bad)


def snap(t: float, free: int, inodes: int) -> CensusSnapshot:
    return CensusSnapshot(t, 0, 0, 0, 0, 0, 0, 0, 0, None, free, 4 * MB, inodes, 10_000, 0.0, 0)


def test_the_write_rate_is_the_filling_pace_even_when_the_store_then_stayed_full() -> None:
    hist = [snap(t, 4 * MB - 100_000 * t, 10_000 - 4 * t) for t in range(0, 40)] + [snap(t, 0, 9_840) for t in range(40, 60)]
    bps, ips = measured_rates(hist, window=600)
    assert bps is not None and bps > 50_000 and ips is not None and ips > 0
    assert measured_rates([snap(t, MB, 100) for t in range(10)]) == (None, None)  # not filling
    assert measured_rates([]) == (None, None)


# -- the supervisor on a fake clock -------------------------------------------------------------------------------

class DyingTarget(FakeTarget):
    """Dies `healthy_for` s after each start; its log then shows ENOSPC in the hidden-state write."""

    def __init__(self, clock: Clock, healthy_for: float | None, log: str) -> None:
        super().__init__(clock, healthy_for)
        self.log = log

    def log_tail(self, since: int = 0, max_bytes: int = 2_000_000) -> str:
        return self.log if self.stalled() else "INFO all fine\n"

    def capture_fields(self) -> dict[str, Any]:
        return {"storage_path": "/store"}


class DeadObserver:
    def __init__(self, target: DyingTarget, clock: Clock) -> None:
        self.target, self.clock, self.tokens = target, clock, 0.0

    def observe(self) -> Observation:
        if self.target.stalled():
            return Observation(self.clock(), None, "refused", False)
        self.tokens += 10
        return Observation(self.clock(), MetricsSample(running=2, waiting=0, prompt_tokens=self.tokens,
                                                       generation_tokens=0.0), None, True)

    def close(self) -> None:
        pass


class Store:
    """statvfs of a 4 MB store whose free space is a function of the fake clock."""

    def __init__(self, clock: Clock, free: Any) -> None:
        self.clock, self.free, self.calls = clock, free, 0

    def __call__(self, path: str) -> SimpleNamespace:
        assert path == "/store"
        self.calls += 1
        return SimpleNamespace(f_bavail=self.free(self.clock()) // 1000, f_frsize=1000, f_blocks=4000,
                               f_favail=5000, f_files=10_000, f_flag=0)


def supervise(tmp_path: Path, target: DyingTarget, clock: Clock, store: Store, **kw: Any) -> Supervisor:
    detect = DetectSettings(poll_interval=1.0, window=10.0, min_bad_evaluations=3, startup_grace=0.0)
    ws = WatchSettings(detect=detect, policy=kw.pop("policy", PolicySettings(backoff_initial=10, max_restarts=3)),
                       capture=CaptureSettings(), capture_budget=5.0, **kw)
    events = EventLog(tmp_path / "events.jsonl", wall=lambda: clock.t + 1.7e9)
    return Supervisor(target, ws, tmp_path, events, WatchMetrics(), clock=clock, wall=lambda: clock.t + 1.7e9,
                      sleep=clock.sleep, make_observer=lambda t: DeadObserver(target, clock),
                      capture_fn=bundle_for, statvfs=store, writable=lambda p: True)


def test_a_storage_death_is_captured_then_restarted_only_after_space_is_back(tmp_path: Path) -> None:
    clock = Clock()
    target = DyingTarget(clock, healthy_for=60, log=f"Worker save_file\nERROR {NOSPACE['line']}\n")
    freed_at: list[float] = []

    def free(t: float) -> int:  # full until the operator frees space 200 s after the death
        died = target.actions and next((at for a, at in target.actions if a == "stop"), None)
        if died and t >= died + 200:
            freed_at.append(t)
            return 3 * MB
        return 0

    sup = supervise(tmp_path, target, clock, Store(clock, free), duration=350)
    assert sup.run() == EXIT_OK
    events = read_events(tmp_path / "events.jsonl")
    ev = [e["event"] for e in events if e["event"] != "detector"]
    i = ev.index("detect")
    assert ev[i:i + 3] == ["detect", "capture", "stop"]
    j = ev.index("storage-wait")
    assert ev[j:].index("restart") < ev[j:].index("start"), ev
    assert ev[i:].index("storage-wait") < ev[i:].index("start")
    detect = next(e for e in events if e["event"] == "detect")
    assert detect["class"] == "server-dead" and any("storage: no-space" in r for r in detect["reasons"])
    assert detect["detection"]["evidence"]["storage_cause"]["kind"] == "no-space"
    wait = next(e for e in events if e["event"] == "storage-wait")
    assert wait["free_bytes"] == 0 and wait["need_bytes"] == 200_000 and wait["path"] == "/store"
    assert "free space in the store" in wait["message"] and "--reap-orphans-older-than" in wait["message"]
    restart = next(e for e in events if e["event"] == "restart")
    assert restart["reason"] == "storage recovered" and restart["free_bytes"] == 3 * MB
    launches = [t for a, t in target.actions if a == "launch"]
    assert launches[1] >= freed_at[0], "started before the space was back"


def test_a_storage_death_whose_space_never_comes_back_ends_the_watch_with_one_line_and_exit_1(tmp_path: Path) -> None:
    clock = Clock()
    target = DyingTarget(clock, healthy_for=30, log=f"ERROR {NOSPACE['line']}\n")
    store = Store(clock, lambda t: 0)
    said: list[str] = []
    sup = supervise(tmp_path, target, clock, store, recovery=RecoverySettings(max_wait=300.0, poll=5.0))
    sup.say = said.append
    assert sup.run() == EXIT_STALL
    events = read_events(tmp_path / "events.jsonl")
    ev = [e["event"] for e in events if e["event"] != "detector"]
    assert ev.count("start") == 1, "restarted into a full store"
    assert ev[-2:] == ["give-up", "watch-stop"]
    give_up = events[-2]
    assert give_up["reason"] == "storage" and give_up["waited_s"] >= 300
    assert said[-1] == give_up["message"] and said[-1].startswith("will not restart:")
    assert "\n" not in said[-1]
    assert store.calls == 61  # polled every 5 s for 300 s, not in a tight loop
    assert sup.metrics.state._value.get() == 4
    assert ev.count("storage-wait") == 5  # once a minute, not once a poll


def test_a_death_without_a_storage_cause_restarts_as_before(tmp_path: Path) -> None:
    clock = Clock()
    target = DyingTarget(clock, healthy_for=30, log="ERROR EngineDeadError: something else\n")
    store = Store(clock, lambda t: 0)
    sup = supervise(tmp_path, target, clock, store, duration=150)
    assert sup.run() == EXIT_OK
    ev = [e["event"] for e in read_events(tmp_path / "events.jsonl")]
    assert "storage-wait" not in ev and "restart" not in ev and ev.count("start") >= 2
    assert store.calls == 0


def test_reaping_during_the_wait_frees_the_store_and_the_server_restarts(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    old = store_dir / "req-1.safetensors"
    clock = Clock()
    target = DyingTarget(clock, healthy_for=30, log=f"ERROR {NOSPACE['line']}\n")
    target.capture_fields = lambda: {"storage_path": str(store_dir)}  # type: ignore[method-assign]
    stop = target.stop

    def stop_leaving_an_old_orphan() -> dict[str, Any]:  # the file that filled the store, written long ago
        if not old.exists():
            old.write_bytes(b"x" * 100)
            os.utime(old, (1, 1))
        return stop()

    target.stop = stop_leaving_an_old_orphan  # type: ignore[method-assign]

    def vfs(path: str) -> SimpleNamespace:  # full while the orphan is there
        full = old.exists()
        return SimpleNamespace(f_bavail=0 if full else 3000, f_frsize=1000, f_blocks=4000, f_favail=5000,
                               f_files=10_000, f_flag=0)

    sup = supervise(tmp_path / "run", target, clock, Store(clock, lambda t: 0), duration=200,
                    storage_duty=True, storage_path=str(store_dir), storage_grace=0.0, reap_older_than=3600.0)
    sup.statvfs = vfs
    assert sup.run() == EXIT_OK
    events = read_events(tmp_path / "run" / "events.jsonl")
    ev = [e["event"] for e in events]
    assert not old.exists()
    assert ev.index("reap-done") < ev.index("restart") < ev.index("start", ev.index("restart"))
    reap = next(e for e in events if e["event"] == "reap")
    assert "deleting orphan" in reap["message"] and "req-1.safetensors" in reap["message"]
    assert next(e for e in events if e["event"] == "restart")["free_bytes"] == 3 * MB


def test_a_storage_death_with_no_known_store_says_it_cannot_wait_and_restarts_under_back_off(tmp_path: Path) -> None:
    clock = Clock()
    target = DyingTarget(clock, healthy_for=30, log=f"ERROR {NOSPACE['line']}\n")
    target.capture_fields = lambda: {}  # type: ignore[method-assign]
    sup = supervise(tmp_path, target, clock, Store(clock, lambda t: 0), duration=100)
    assert sup.run() == EXIT_OK
    events = read_events(tmp_path / "events.jsonl")
    wait = next(e for e in events if e["event"] == "storage-wait")
    assert wait["status"] == "unknown-store" and "--storage PATH" in wait["message"]
    assert [e["event"] for e in events].count("start") >= 2


@pytest.mark.parametrize("args,text", [(["--restart-min-free", "lots"], "cannot parse --restart-min-free 'lots'"),
                                       (["--restart-min-free", "120%"], "a percentage must be between 0 and 100"),
                                       (["--storage-wait-max", "0"], "--storage-wait-max must be positive")])
def test_bad_storage_restart_options_are_one_line_and_exit_2(tmp_path: Path, args: list[str], text: str) -> None:
    from repro.errors import EXIT_USAGE
    from tests.helpers_cli import one_line_error, repro_inprocess

    out = tmp_path / "run"
    r = repro_inprocess("watch", "--url", "http://127.0.0.1:9", "--restart-cmd", "true", "--out", str(out), *args)
    one_line_error(r, EXIT_USAGE, text)
    assert not out.exists()


def test_a_watch_bundle_gets_the_stores_census_growth_curve_and_rates(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    for i in range(3):
        (store_dir / f"r{i}.safetensors").write_bytes(b"x" * (10 + i))
        os.utime(store_dir / f"r{i}.safetensors", (1, 1))
    clock = Clock()
    target = DyingTarget(clock, healthy_for=30, log="ERROR EngineDeadError\n")
    reqs: list[Any] = []
    sup = supervise(tmp_path / "run", target, clock, Store(clock, lambda t: MB), duration=45,
                    storage_duty=True, storage_path=str(store_dir), storage_grace=0.0)
    sup.capture_fn = lambda req: (reqs.append(req), bundle_for(req))[1]
    sup.run()
    acc = reqs[0].storage_accounting
    assert acc["path"] == str(store_dir) and acc["orphan_files"] == 3 and acc["orphan_bytes"] == 33
    assert acc["growth_curve"] and acc["growth_curve"][-1]["orphan_files"] == 3
    assert {"orphan_files_per_s", "used_bytes_per_s"} <= set(acc["rates"])
    assert sorted(o["name"] for o in acc["orphan_sample"]) == ["r0.safetensors", "r1.safetensors", "r2.safetensors"]
