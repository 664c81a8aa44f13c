"""Pieces of real trials that need no server: heartbeat exposure from events.jsonl, slot environments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repro.bisect import trials
from repro.bisect.space import Change, Config, SearchSpace, apply
from repro.executors import local
from repro.scenario import Scenario


def events(tmp: Path, *evs: dict) -> Path:
    (tmp / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evs))
    return tmp


START = {"t": 0.0, "wall": "2026-11-28T18:00:00.000Z", "event": "start"}
T0 = trials._parse_wall(START["wall"])


def test_heartbeat_exposure_is_time_since_the_load_started(tmp_path: Path) -> None:
    d = events(tmp_path, START)
    assert trials.exposure_so_far(d, 600.0, now=T0 + 42.5) == pytest.approx(42.5)


def test_heartbeat_exposure_never_counts_the_drain_after_the_duration(tmp_path: Path) -> None:
    d = events(tmp_path, START)
    assert trials.exposure_so_far(d, 30.0, now=T0 + 75.0) == pytest.approx(30.0)


def test_heartbeat_exposure_stops_at_the_onset_of_a_suspected_stall(tmp_path: Path) -> None:
    d = events(tmp_path, START, {"t": 12.0, "event": "detector", "state": "suspect", "since": 10.0})
    assert trials.exposure_so_far(d, 600.0, now=T0 + 50.0) == pytest.approx(10.0)
    d = events(tmp_path, START, {"t": 12.0, "event": "detector", "state": "suspect", "since": 10.0},
               {"t": 14.0, "event": "detector", "state": "healthy"})
    assert trials.exposure_so_far(d, 600.0, now=T0 + 50.0) == pytest.approx(50.0)  # a false alarm: counts again


def test_heartbeat_exposure_stops_where_the_suspected_stall_began_when_the_event_says(tmp_path: Path) -> None:
    d = events(tmp_path, START, {"t": 12.0, "event": "detector", "state": "suspect", "since": 10.0, "began": 9.0})
    assert trials.exposure_so_far(d, 600.0, now=T0 + 50.0) == pytest.approx(9.0)


def test_heartbeat_exposure_is_none_before_the_load_starts(tmp_path: Path) -> None:
    assert trials.exposure_so_far(tmp_path, 60.0) is None
    assert trials.exposure_so_far(events(tmp_path), 60.0) is None


def test_cpu_slices_split_cores_between_parallel_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trials.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    assert trials.cpu_slices(2) == ["0,1,2,3", "4,5,6,7"]
    assert trials.cpu_slices(1) == ["nobind"]
    monkeypatch.setattr(trials.os, "sched_getaffinity", lambda pid: {0})
    assert trials.cpu_slices(2) == ["nobind", "nobind"]  # fewer cores than servers: do not pin


def test_gpu_slices_split_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert trials.gpu_slices(2) == ["0,1", "2,3"]
    assert trials.gpu_slices(1) == [None]


def test_trial_scenario_applies_changes_to_a_plain_server(tmp_path: Path) -> None:
    sp = SearchSpace(1, 32, tuple(Change.parse(c) for c in ["extract=2", "storage=/dev/shm/repro-bisect-x",
                                                                "timeout=120", "retries=3", "arg=--max-num-batched-tokens 512"]))
    base = Scenario()
    base.server.model = str(tmp_path)  # no config.json: layer ids left to the launcher
    plain = apply(base, sp, Config(4, frozenset()))
    assert (plain.server.extract, plain.load.workload, plain.load.retries, plain.load.concurrency) == (False, "chat", 0, 4)
    full = trials.trial_scenario(base, sp, sp.baseline, 120.0, 8450, 1, 2, tmp_path)
    assert full.server.extract and full.load.workload == "hidden-states"
    assert full.server.storage == "/dev/shm/repro-bisect-x/slot1"  # parallel slots never share storage
    assert (full.load.request_timeout, full.load.retries, full.load.duration) == (120.0, 3, 120.0)
    assert full.server.extra_args[-2:] == ["--max-num-batched-tokens", "512"]
    assert full.server.port == 8450
    assert {"VLLM_CPU_OMP_THREADS_BIND", "CUDA_VISIBLE_DEVICES"} & set(full.server.env)


def test_extract_n_turns_into_n_layer_ids(tmp_path: Path) -> None:
    from repro.bisect.space import layers_for

    assert layers_for(4, 32) == [2, 16, 29, 32]
    assert layers_for(1, 32) == [32]
    assert len(layers_for(6, 32)) == 6


def test_parallel_step_sums_exposure_and_hangs_if_any_slot_hung(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sp = SearchSpace(1, 8)
    backend = local.StressBackend(Scenario(), sp, tmp_path, parallel=3)
    seen: list[tuple[int, float]] = []

    groups = set()

    def fake(self, step, slot, cfg, duration, hooks, group_stop=None, fresh=False):  # type: ignore[no-untyped-def]
        seen.append((slot, duration))
        groups.add(id(group_stop))
        return {"hung": slot == 1, "exposure": 10.0 * (slot + 1), "trial_time": 70.0, "skipped": False,
                "dir": f"d{slot}"}

    monkeypatch.setattr(local.StressBackend, "run_trial", fake)
    out = backend.run_step(0, Config(8, frozenset()), 300.0, hooks=None)
    assert sorted(seen) == [(0, 100.0), (1, 100.0), (2, 100.0)]  # the cap is shared between the slots
    assert len(groups) == 1 and id(None) not in groups  # one shared stop event: a stall ends the siblings
    assert out.hung and out.exposure == pytest.approx(60.0) and out.trial_time == pytest.approx(210.0)


def test_step_is_skipped_only_when_no_slot_could_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = local.StressBackend(Scenario(), SearchSpace(1, 8), tmp_path, parallel=2)

    def fake(self, step, slot, cfg, duration, hooks, group_stop=None, fresh=False):  # type: ignore[no-untyped-def]
        return {"hung": False, "exposure": 0.0 if slot == 0 else 50.0, "trial_time": 60.0, "skipped": slot == 0,
                "reason": "vLLM exited", "dir": "d"}

    monkeypatch.setattr(local.StressBackend, "run_trial", fake)
    out = backend.run_step(0, Config(8, frozenset()), 100.0, hooks=None)
    assert not out.skipped and out.exposure == pytest.approx(50.0)


class FakeServer:
    """Stands in for VllmServer in the reuse bookkeeping (no process)."""

    made: list["FakeServer"] = []

    def __init__(self, settings, run_dir) -> None:  # type: ignore[no-untyped-def]
        self.settings = settings
        self.run_dir = run_dir
        self.stopped = False
        self.dead = False
        FakeServer.made.append(self)

    def alive(self) -> bool:
        return not self.stopped and not self.dead

    def stop(self, grace: float = 20.0) -> list[int]:
        self.stopped = True
        return []


def _scn(space: SearchSpace, cfg: Config, tmp: Path, slot: int = 0) -> Scenario:
    return trials.trial_scenario(Scenario(), space, cfg, 60.0, 9100, slot, 1, tmp)


def test_a_clean_servers_slot_reuses_it_for_the_same_settings_only(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Another concurrency on the same server settings reuses the idle server; another toggle, a dead
    server or stop_all replaces/stops it."""
    monkeypatch.setattr(local, "VllmServer", FakeServer)
    monkeypatch.setattr(local, "port_free", lambda host, port: True)
    FakeServer.made = []
    sp = SearchSpace(1, 8, (Change.parse("prefix-caching=on"),))
    be = local.StressBackend(Scenario(), sp, tmp_path)
    c8, c3, c3t = Config(8, frozenset()), Config(3, frozenset()), Config(3, frozenset(sp.changes))
    first, life, reused = be._server_for(0, _scn(sp, c8, tmp_path), tmp_path / "t0", c8)
    assert not reused and life.ident == str(tmp_path / "t0") and life.uptime == 0.0
    life.uptime, life.last = 120.0, c8
    be._idle[0] = (trials.server_key(first.settings), first, life)
    again, life2, reused = be._server_for(0, _scn(sp, c3, tmp_path), tmp_path / "t1", c3)
    assert again is first and reused and life2.uptime == 120.0  # only the client's concurrency changed
    be._idle[0] = (trials.server_key(first.settings), first, life2)
    other, life3, reused = be._server_for(0, _scn(sp, c3t, tmp_path), tmp_path / "t2", c3t)
    assert other is not first and not reused and first.stopped and life3.uptime == 0.0  # a server toggle
    be._idle[0] = (trials.server_key(other.settings), other, life3)
    other.dead = True
    fresh, _, reused = be._server_for(0, _scn(sp, c3t, tmp_path), tmp_path / "t3", c3t)
    assert fresh is not other and not reused
    be._idle[0] = (trials.server_key(fresh.settings), fresh, local.ServerLife("t3"))
    be.stop_all()
    assert all(s.stopped for s in FakeServer.made) and not be._idle


def test_with_an_aging_hazard_a_kept_server_only_continues_its_own_configuration(tmp_path: Path,
                                                                                monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """GIVEN a clean server kept after a trial at concurrency 8 WHEN the search asks for fresh servers
    (the hazard ages) THEN a trial at concurrency 3 gets a new server (the old one's age would count
    for 3), while another trial at 8 continues the old one, its uptime carried on."""
    monkeypatch.setattr(local, "VllmServer", FakeServer)
    monkeypatch.setattr(local, "port_free", lambda host, port: True)
    FakeServer.made = []
    sp = SearchSpace(1, 8)
    be = local.StressBackend(Scenario(), sp, tmp_path)
    c8, c3 = Config(8, frozenset()), Config(3, frozenset())
    srv, life, _ = be._server_for(0, _scn(sp, c8, tmp_path), tmp_path / "t0", c8)
    life.uptime, life.last = 3600.0, c8
    be._idle[0] = (trials.server_key(srv.settings), srv, life)
    other, life3, reused = be._server_for(0, _scn(sp, c3, tmp_path), tmp_path / "t1", c3, fresh=True)
    assert other is not srv and not reused and srv.stopped and life3.uptime == 0.0
    life3.uptime, life3.last = 600.0, c3
    be._idle[0] = (trials.server_key(other.settings), other, life3)
    same, life4, reused = be._server_for(0, _scn(sp, c3, tmp_path), tmp_path / "t2", c3, fresh=True)
    assert same is other and reused and life4.uptime == 600.0
    be.stop_all()


def test_server_key_ignores_the_port_but_not_the_launch_settings() -> None:
    a, b = Scenario().server, Scenario().server
    b.port = a.port + 7
    assert trials.server_key(a) == trials.server_key(b)
    b.prefix_caching = True
    assert trials.server_key(a) != trials.server_key(b)


@pytest.mark.parametrize("spec, ok", [(None, True), ("hazard=3600,min_running=4", True),
                                      ("hazard=10,min_running=2,seed=3", True), ("stall-after=30", False),
                                      ("hazard=3600,min_running=2,onset=500", True),
                                      ("stall-for=10,after=5", False), ("write-stall", False)])
def test_servers_with_faults_timed_from_their_start_are_never_reused(spec: str | None, ok: bool) -> None:
    assert trials.reusable_injection(spec) is ok
