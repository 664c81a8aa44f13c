"""Pieces of the Ray executor that run without a cluster: evidence packing, simulated trials, flags."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest

from repro.bisect.sim import SimBackend, model_from_dict
from repro.bisect.space import Change, Config, SearchSpace
from repro.errors import UsageError
from repro.executors.cluster import Ask, RaySession, split_address
from repro.executors.node import Progress, pack_dir, sim_trial, unpack_into


class RecordingHooks:
    def __init__(self) -> None:
        self.n = 0
        self.ends: list[dict[str, Any]] = []

    def trial_start(self, slot: int, **info: Any) -> int:
        self.n += 1
        return self.n - 1

    def heartbeat(self, trial: int, exposure: float) -> None:
        pass

    def trial_end(self, trial: int, hung: bool, exposure: float, trial_time: float, skipped: bool = False,
                  detail: dict | None = None, **extra: Any) -> None:
        self.ends.append({"trial": trial, "hung": hung, "exposure": exposure, "trial_time": trial_time})


def test_pack_and_unpack_round_trip_keeps_every_file_and_its_bytes(tmp_path: Path) -> None:
    src = tmp_path / "trial"
    (src / "bundle-001").mkdir(parents=True)
    (src / "summary.json").write_text('{"outcome": "stall"}')
    (src / "bundle-001" / "stacks.txt").write_bytes(os.urandom(5000))
    data, left = pack_dir(src, 1 << 20)
    assert left == []
    dest = tmp_path / "home"
    assert unpack_into(data, dest) == 2
    for rel in ("summary.json", "bundle-001/stacks.txt"):
        assert (dest / rel).read_bytes() == (src / rel).read_bytes()


def test_pack_over_budget_leaves_out_the_biggest_files_first_and_lists_them(tmp_path: Path) -> None:
    src = tmp_path / "trial"
    src.mkdir()
    (src / "summary.json").write_text("{}")
    (src / "server.log").write_bytes(os.urandom(3 << 20))
    (src / "bundle.tar.gz").write_bytes(os.urandom(2 << 20))
    data, left = pack_dir(src, 2_500_000)
    assert left == ["server.log"]  # dropping the 3 MB log is enough; the 2 MB bundle stays
    names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
    assert sorted(names) == ["bundle.tar.gz", "summary.json"]


def test_unpack_refuses_a_member_that_would_land_outside_the_run_directory(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(ValueError, match="outside"):
        unpack_into(buf.getvalue(), tmp_path / "home")
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("parallel", [1, 3])
def test_simulated_slots_on_nodes_draw_exactly_what_the_local_sim_backend_draws(parallel: int) -> None:
    """GIVEN a hazard model WHEN each slot of a step is computed alone (as a Ray actor does) THEN hang,
    exposure and trial time of every slot equal SimBackend's for the same seed and step."""
    space = SearchSpace(1, 8, (Change.parse("storage=/mnt/nfs"), Change.parse("timeout=120")))
    model = model_from_dict(space, {"mean_time_to_hang": "1h", "threshold": 3, "requires": ["storage"]},
                            {"seed": 11, "overhead": "60s"})
    cfgs = [Config(8, frozenset(space.changes)), Config(3, frozenset({space.changes[0]})), Config(2, frozenset())]
    hung_seen = 0
    for step in range(12):
        cfg = cfgs[step % len(cfgs)]
        cap = 4000.0
        hooks = RecordingHooks()
        out = SimBackend(model, parallel).run_step(step, cfg, cap, hooks)
        mine = [sim_trial({"model": model, "step": step, "slot": s, "parallel": parallel, "each": cap / parallel,
                           "rate": model.hazard.rate_of(space, cfg)}, Progress(), threading.Event())
                for s in range(parallel)]
        assert [(m["hung"], m["exposure"], m["trial_time"]) for m in mine] == \
               [(e["hung"], e["exposure"], e["trial_time"]) for e in hooks.ends]
        assert max(m["wall"] for m in mine) == out.wall
        hung_seen += out.hung
    assert 0 < hung_seen < 12  # the comparison covered both hangs and clean steps


def test_a_simulated_trial_stopped_mid_run_reports_only_the_exposure_it_ran() -> None:
    space = SearchSpace(1, 4)
    model = model_from_dict(space, {"mean_time_to_hang": "1000h"}, {"seed": 1, "overhead": "0s", "speed": 100,
                                                                     "heartbeat": 0.01})
    stop = threading.Event()
    prog = Progress()
    threading.Timer(0.3, stop.set).start()
    r = sim_trial({"model": model, "step": 0, "slot": 0, "parallel": 1, "each": 3600.0,
                   "rate": model.hazard.rate_of(space, Config(4, frozenset()))}, prog, stop)
    assert r["stopped"] is True
    assert 0 < r["exposure"] <= 100 * 0.6  # about 0.3 s at 100x: never the whole hour


@pytest.mark.parametrize("bad", ["127.0.0.1", "host:port", ":6379", "127.0.0.1:0", "127.0.0.1:70000"])
def test_malformed_ray_address_is_a_usage_error_naming_the_expected_form(bad: str) -> None:
    with pytest.raises(UsageError, match="HOST:PORT"):
        split_address(bad)


def test_ray_address_forms_are_split_into_host_and_port() -> None:
    assert split_address("127.0.0.1:6379") == ("127.0.0.1", 6379)
    assert split_address("ray://10.0.0.2:10001") == ("10.0.0.2", 10001)
    assert split_address("auto") is None


class FakeRay:
    def __init__(self, nodes: list[dict]) -> None:
        self._nodes = nodes

    def nodes(self) -> list[dict]:
        return self._nodes

    def is_initialized(self) -> bool:
        return False


def _node(cpu: float, gpu: float = 0.0, alive: bool = True) -> dict:
    res = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
    return {"Alive": alive, "Resources": res}


def test_more_gpus_per_trial_than_any_node_has_is_one_usage_line_with_the_cluster_numbers() -> None:
    s = RaySession("127.0.0.1:6379", FakeRay([_node(8, 1), _node(8, 1), _node(4, 4, alive=False)]))
    with pytest.raises(UsageError) as e:
        s.check_fits(Ask(cpus=1, gpus=2))
    msg = e.value.message
    assert "\n" not in msg and "2 GPU" in msg and "largest node" in msg and "has 1" in msg and "2 in the cluster" in msg


def test_trials_that_fit_but_not_all_at_once_get_a_queueing_note_not_an_error() -> None:
    s = RaySession(None, FakeRay([_node(2), _node(2)]))
    assert s.check_fits(Ask(cpus=1), count=4) is None
    note = s.check_fits(Ask(cpus=1), count=6)
    assert note is not None and "holds 4" in note and "2 of 6 will wait" in note
    with pytest.raises(UsageError, match="CPU"):
        s.check_fits(Ask(cpus=3))


def test_evidence_in_a_shared_artifact_dir_is_copied_home_and_a_missing_one_is_reported(tmp_path: Path) -> None:
    from repro.executors.ray_backend import bring_home

    shared = tmp_path / "shared" / "run-abc" / "step0000-slot0" / "out" / "trials" / "step0000-slot0"
    (shared / "bundle-001").mkdir(parents=True)
    (shared / "bundle-001" / "stacks.txt").write_text("EngineCore.step")
    home, ev = bring_home({"kind": "path", "path": str(shared)}, tmp_path / "run" / "trials" / "step0000-slot0")
    assert home is not None and (home / "bundle-001" / "stacks.txt").read_text() == "EngineCore.step"
    assert ev == {"via": "artifact-dir", "path": str(shared)}
    home, ev = bring_home({"kind": "path", "path": str(tmp_path / "elsewhere")}, tmp_path / "run2")
    assert home is None and "not shared" in ev["reason"] and not (tmp_path / "run2").exists()


def test_evidence_over_budget_names_what_stayed_on_the_node(tmp_path: Path) -> None:
    from repro.executors.ray_backend import bring_home

    src = tmp_path / "node"
    src.mkdir()
    (src / "summary.json").write_text("{}")
    (src / "server.log").write_bytes(os.urandom(2 << 20))
    data, left = pack_dir(src, 1 << 20)
    home, ev = bring_home({"kind": "bytes", "data": data, "bytes": len(data), "left_out": left,
                           "node_path": str(src)}, tmp_path / "home")
    assert (home / "summary.json").exists() and not (home / "server.log").exists()
    assert ev["left_on_node"] == {"path": str(src), "files": ["server.log"]}


def test_parallel_real_trials_on_ray_get_a_storage_directory_per_slot_like_local_ones() -> None:
    """Two slots of one step may land on the same node: each writes hidden states to its own directory."""
    from repro.executors.ray_backend import RayBackend
    from repro.scenario import Scenario

    class _Ray:
        def remote(self, **kw: Any) -> Any:
            return lambda cls: cls

    space = SearchSpace(1, 8, (Change.parse("storage=/mnt/nfs/hs/"), Change.parse("timeout=120")),
                        plain_storage="/dev/shm/plain")
    cfg = Config(8, frozenset(space.changes))
    rb = RayBackend(RaySession(None, _Ray()), Path("/tmp/run"), mode="real", parallel=2, base=Scenario(), space=space)
    jobs = [rb.job(3, slot, cfg, 100.0, 7 + slot) for slot in (0, 1)]
    assert [j["config"]["changes"] for j in jobs] == [["storage=/mnt/nfs/hs/slot0", "timeout=120"],
                                                      ["storage=/mnt/nfs/hs/slot1", "timeout=120"]]
    assert [j["space"]["plain_storage"] for j in jobs] == ["/dev/shm/plain/slot0", "/dev/shm/plain/slot1"]
    assert cfg.to_dict()["changes"] == ["storage=/mnt/nfs/hs/", "timeout=120"]  # the journaled config is unchanged
    one = RayBackend(RaySession(None, _Ray()), Path("/tmp/run"), mode="real", parallel=1, base=Scenario(), space=space)
    assert one.job(0, 0, cfg, 10.0, 0)["space"]["plain_storage"] == "/dev/shm/plain"
