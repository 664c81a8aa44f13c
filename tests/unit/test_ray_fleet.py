"""The stress fleet's decisions (stop at the first stall, --keep-going, lost replicas, summary.json),
driven by a scripted stand-in for Ray: each fake actor replays a list of status snapshots, one per poll."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from repro.executors.cluster import Ask, RaySession
from repro.executors.fleet import FleetView, replica_scenario, run_fleet
from repro.scenario import LoadSettings, Scenario, ServerSettings


class Ref:
    def __init__(self, fn: Any) -> None:
        self.fn = fn


class ActorDiedError(Exception):
    pass


class FakeActor:
    def __init__(self, script: list[dict], end: dict | None, index: int) -> None:
        self.script = list(script)
        self.end = end  # None: the actor dies after its script
        self.i = index
        self.stopped = False
        self.polls = 0
        outer = self

        class M:
            def __init__(self, fn: Any) -> None:
                self.fn = fn

            def remote(self, *a: Any) -> Ref:  # runs at once, as a real actor call would (no get needed)
                value = self.fn(*a)
                return Ref(lambda: value)

        self.where = M(lambda: {"node_ip": f"10.0.0.{index}", "node_id": f"node{index}", "hostname": f"h{index}",
                                "pid": 100 + index})
        self.status = M(outer._status)
        self.stop = M(outer._stop)
        self.run = M(lambda job: None)  # replaced per fleet() with a deferred result

    def _status(self) -> dict:
        self.polls += 1
        if self.script and not self.stopped:
            self.last = self.script.pop(0)
        return dict(getattr(self, "last", {"phase": "starting", "exposure": 0.0}))

    def _stop(self) -> bool:
        self.stopped = True
        return True

    def done(self) -> bool:
        return self.stopped or not self.script

    def _result(self, job: dict) -> dict:
        assert job["kind"] == "stress" and job["scenario"].server.port == 9000 + self.i
        if self.end is None and not self.stopped:
            raise ActorDiedError("The actor died unexpectedly before finishing this task.")
        if self.stopped:
            exp = getattr(self, "last", {}).get("exposure", 0.0)
            return {"hung": False, "exposure": exp, "exit_code": 130, "outcome": "interrupted", "phase": "stopped",
                    "skipped": False}
        return dict(self.end)


class FakeRay:
    def __init__(self, actors: list[FakeActor]) -> None:
        self.actors = actors
        self.killed: list[int] = []
        self._n = 0
        outer = self

        class Remote:
            def options(self, **kw: Any) -> "Remote":
                outer.asked = kw
                return self

            def remote(self) -> FakeActor:
                a = outer.actors[outer._n]
                outer._n += 1
                return a

        self._remote = Remote()

    def remote(self, **kw: Any) -> Any:
        return lambda cls: self._remote

    def wait(self, refs: list[Ref], num_returns: int = 1, timeout: float | None = None) -> tuple[list, list]:
        ready = [r for r in refs if self._ready(r)]
        return ready, [r for r in refs if r not in ready]

    def _ready(self, ref: Ref) -> bool:
        a = getattr(ref, "actor", None)
        return a is None or a.done()

    def get(self, ref: Ref, timeout: float | None = None) -> Any:
        return ref.fn()

    def kill(self, actor: FakeActor, no_restart: bool = True) -> None:
        self.killed.append(actor.i)


def fleet(tmp_path: Path, scripts: list[tuple[list[dict], dict | None]], keep_going: bool = False) -> tuple:
    actors = [FakeActor(s, e, i) for i, (s, e) in enumerate(scripts)]
    ray = FakeRay(actors)
    for a in actors:  # run refs know their actor, so the fake wait() can tell when a replica is over
        m = a.run

        def remote(job: dict, a: FakeActor = a) -> Ref:
            r = Ref(lambda: a._result(job))
            r.actor = a  # type: ignore[attr-defined]
            return r

        m.remote = remote  # type: ignore[method-assign]
    scn = Scenario(server=ServerSettings(port=9000, storage=str(tmp_path / "hs")), load=LoadSettings(duration=600))
    res = run_fleet(scn, tmp_path, RaySession("127.0.0.1:6379", ray), len(actors), Ask(cpus=2), keep_going=keep_going,
                    poll=0.0, view=FleetView(stream=open(tmp_path / "view.log", "w"), every=0.0))
    return res, actors, ray


STALL_END = {"hung": True, "exposure": 40.0, "exit_code": 1, "outcome": "stall", "stall_class": "engine-stall",
             "capture": "done", "phase": "captured", "skipped": False}
CLEAN_END = {"hung": False, "exposure": 600.0, "exit_code": 0, "outcome": "clean", "phase": "clean", "skipped": False}


def soak(n: int, step: float = 10.0) -> list[dict]:
    return [{"phase": "loading", "exposure": step * (k + 1)} for k in range(n)]


def test_first_classified_stall_stops_every_other_replica_and_summary_says_who_ran_what(tmp_path: Path) -> None:
    res, actors, ray = fleet(tmp_path, [
        (soak(50), CLEAN_END),
        (soak(3) + [{"phase": "stalled", "exposure": 40.0, "stall_class": "engine-stall"}] * 2, STALL_END),
        (soak(50), CLEAN_END),
    ])
    s = json.loads((tmp_path / "summary.json").read_text())
    assert res.exit_code == 1 and s["hangs"] == 1
    assert actors[0].stopped and actors[2].stopped and not actors[1].stopped
    rows = {r["replica"]: r for r in s["replicas"]}
    assert rows[1]["outcome"] == "stall" and rows[1]["stall_class"] == "engine-stall" and rows[1]["node"] == "10.0.0.1"
    assert rows[0]["outcome"] == "stopped" and rows[0]["stopped_by_fleet"] and rows[0]["exposure_s"] < 600
    assert [r["pid"] for r in s["replicas"]] == [100, 101, 102] and [r["port"] for r in s["replicas"]] == [9000, 9001, 9002]
    assert s["first_stall"]["replica"] == 1 and s["first_stall"]["exposure_s"] == 40.0
    assert s["exposure_s"] == pytest.approx(sum(r["exposure_s"] for r in s["replicas"]))
    assert sorted(ray.killed) == [0, 1, 2] and ray.asked == {"num_cpus": 2, "num_gpus": 0.0}
    view = (tmp_path / "view.log").read_text()
    assert "replica 1: stalled" in view and "hangs 1" in view


def test_keep_going_stops_only_the_stalled_replica(tmp_path: Path) -> None:
    res, actors, _ = fleet(tmp_path, [
        (soak(8), CLEAN_END),
        (soak(2) + [{"phase": "stalled", "exposure": 40.0, "stall_class": "engine-stall"}], STALL_END),
    ], keep_going=True)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert not actors[0].stopped
    assert [r["outcome"] for r in s["replicas"]] == ["clean", "stall"]
    assert s["exposure_s"] == 640.0 and res.exit_code == 1 and s["keep_going"] is True


def test_a_lost_replica_keeps_the_exposure_of_its_last_poll_and_the_others_go_on(tmp_path: Path) -> None:
    res, actors, _ = fleet(tmp_path, [(soak(6), CLEAN_END), (soak(3, step=7.0), None)])
    s = json.loads((tmp_path / "summary.json").read_text())
    lost = s["replicas"][1]
    assert lost["outcome"] == "lost" and lost["exposure_s"] == 21.0 and "ActorDiedError" in lost["error"]
    assert s["replicas"][0]["outcome"] == "clean" and res.exit_code == 0


def test_each_replica_gets_its_own_port_storage_and_seed() -> None:
    scn = Scenario(server=ServerSettings(port=8000, storage="/dev/shm/hs"), load=LoadSettings(seed=5))
    r2 = replica_scenario(scn, 2)
    assert (r2.server.port, r2.server.storage, r2.load.seed) == (8002, "/dev/shm/hs/replica-2", 7)
    assert scn.server.port == 8000  # the base is not changed
