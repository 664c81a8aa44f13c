"""The Ray executor on a real local Ray cluster: a head and a worker node, loopback only.

One cluster for the module (``ray.cluster_utils.Cluster``: a head node with 1 CPU and a worker
node with 2 CPUs, each its own raylet; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray keep
every node address on 127.0.0.1 instead of the machine's external address), shut down at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: node addresses stay on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from repro.bisect.journal import Journal, read_steps, total_exposure  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.integration.conftest import require_vllm, vllm_available  # noqa: E402

ray = pytest.importorskip("ray") if os.environ.get("REPRO_REQUIRE_VLLM") != "1" else __import__("ray")

SMALL = """
[space]
concurrency = [1, 4]
changes = ["storage=/mnt/nfs/hs"]

[hazard]
mean_time_to_hang = "10m"
threshold = 3
requires = ["storage"]

[sim]
seed = {seed}
overhead = "30s"
speed = {speed}
heartbeat = 0.05
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    tmp = Path(f"/dev/shm/repro-ray-test-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    old_tmpdir = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(tmp)
    ray_constants.ENABLE_RAY_CLUSTER = False
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                      "dashboard_port": free_port(),
                                                      "object_store_memory": 150_000_000})
    try:
        c.add_node(num_cpus=2, object_store_memory=150_000_000)
        c.wait_for_nodes()
        assert c.address.startswith("127.0.0.1:")
        yield c.address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
        if old_tmpdir is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old_tmpdir


def bisect(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "repro", "bisect", *args], capture_output=True, text=True,
                          timeout=timeout)


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "journal.jsonl").read_text().splitlines() if x.strip()]


def test_simulated_bisect_through_ray_gives_the_local_result_and_journal_totals(cluster: str, real_trial: dict,
                                                                                tmp_path: Path) -> None:
    """GIVEN one hazard model and seed WHEN bisecting with the local executor and through the Ray cluster
    THEN the minimal configuration, the steps and their outcomes, and the journal's totals are the same,
    and every Ray trial is journaled with the node that ran it.

    (`real_trial` only starts the real-vLLM trial of the last test in the background, to overlap its start.)"""
    model = tmp_path / "model.toml"
    model.write_text(SMALL.format(seed=3, speed=0))
    local, remote = tmp_path / "local", tmp_path / "ray"
    a = bisect("--simulate", str(model), "--min-trial", "30s", "--out", str(local))
    b = bisect("--simulate", str(model), "--min-trial", "30s", "--out", str(remote),
               "--executor", "ray", "--ray-address", cluster)
    assert a.returncode == 0, a.stderr[-2000:]
    assert b.returncode == 0, b.stderr[-2000:]
    ma, mb = (json.loads((d / "minimal.json").read_text()) for d in (local, remote))
    assert ma["status"] == mb["status"] == "minimal"
    assert mb["config"] == ma["config"] == {"concurrency": 3, "changes": ["storage=/mnt/nfs/hs"]}
    ja, jb = Journal(local / "journal.jsonl"), Journal(remote / "journal.jsonl")
    sa, sb = read_steps(ja), read_steps(jb)
    assert len(sb) == len(sa) >= 5
    assert [(s.config, s.hung, round(s.exposure, 3), round(s.trial_time, 3)) for s in sb] == \
           [(s.config, s.hung, round(s.exposure, 3), round(s.trial_time, 3)) for s in sa]
    assert total_exposure(jb) == pytest.approx(total_exposure(ja), abs=1e-6)
    trials = [r for r in records(remote) if r["type"] == "trial"]
    assert trials and all(r["executor"] == "ray" and r["node"] == "127.0.0.1" and r["node_id"] and r["pid"]
                          for r in trials)
    assert len({r["node_id"] for r in trials}) >= 1
    assert "executor: ray" in b.stderr


def test_killing_the_worker_process_mid_trial_is_a_skipped_trial_with_its_last_heartbeat(cluster: str,
                                                                                          tmp_path: Path) -> None:
    """GIVEN a bisect through Ray whose simulated trials run in real time (2000x) WHEN the worker process
    running a long clean trial (concurrency below the hazard's threshold) is killed with SIGKILL after a few
    heartbeats THEN the journal ends that trial as skipped with exactly the exposure of its last journaled
    heartbeat, and the search goes on (the configuration is tried again) to the right minimal configuration."""
    model = tmp_path / "model.toml"
    model.write_text(SMALL.format(seed=3, speed=2000))
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "repro", "bisect", "--simulate", str(model), "--min-trial", "30s",
                          "--heartbeat", "0.1", "--out", str(run), "--executor", "ray", "--ray-address", cluster],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and victim is None and p.poll() is None:
            time.sleep(0.05)
            if not (run / "journal.jsonl").exists():
                continue
            recs = records(run)
            low = {r["step"] for r in recs if r["type"] == "step" and r["config"]["concurrency"] < 3}
            ended = {r["trial"] for r in recs if r["type"] == "trial-end"}
            for tr in (r for r in recs if r["type"] == "trial" and r["step"] in low and r["trial"] not in ended):
                if sum(1 for r in recs if r["type"] == "heartbeat" and r["trial"] == tr["trial"]) >= 3:
                    os.kill(tr["pid"], signal.SIGKILL)
                    victim = tr["trial"]
                    break
        assert victim is not None, "no long clean trial was seen running"
        out, err = p.communicate(timeout=150)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err[-3000:]
    recs = records(run)
    end = next(r for r in recs if r["type"] == "trial-end" and r["trial"] == victim)
    beats = [r["exposure"] for r in recs if r["type"] == "heartbeat" and r["trial"] == victim]
    cap = next(r["cap"] for r in recs if r["type"] == "trial" and r["trial"] == victim)
    assert end["skipped"] is True and end["hung"] is False
    assert end["exposure"] == max(beats) > 0  # up to the last heartbeat: never invented
    assert end["exposure"] < cap  # the trial really was cut short
    assert "lost" in end["detail"]["reason"]
    step = next(r["step"] for r in recs if r["type"] == "trial" and r["trial"] == victim)
    cfg = next(r["config"] for r in recs if r["type"] == "step" and r["step"] == step)
    later = [r for r in recs if r["type"] == "step" and r["step"] > step]
    assert later and later[0]["config"] == cfg  # the search went on: the lost step was tried again
    assert recs[-1]["type"] == "done"
    minimal = json.loads((run / "minimal.json").read_text())
    assert minimal["status"] == "minimal" and minimal["config"]["concurrency"] == 3
    assert total_exposure(Journal(run / "journal.jsonl")) == pytest.approx(
        sum(r["exposure"] for r in recs if r["type"] == "trial-end"))
    assert "actor lost" in err


@pytest.fixture(scope="module")
def real_trial(cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Starts the real-vLLM bisect in the background at once, so that vLLM's long start overlaps the
    simulated tests. The search has one configuration (concurrency 4, plain server) and a given prior,
    so it is exactly one trial: the confirmation run."""
    run = tmp_path_factory.mktemp("ray-real") / "run"
    box: dict = {"run": run}
    if not vllm_available():
        yield box
        return
    storage = f"/dev/shm/repro-ray-test-hs-{os.getpid()}"
    cmd = [sys.executable, "-m", "repro", "bisect", "--concurrency", "4", "--prior", "1/10s", "--confirm-hangs", "1",
           "--inject", "stall-after=8", "--window", "4", "--poll-interval", "0.5", "--min-bad", "3",
           "--startup-grace", "0", "--workload-prompt-len", "16-64", "--max-tokens", "8", "--heartbeat", "2",
           "--max-trial", "4m", "--port", str(free_port()), "--plain-storage", storage, "--out", str(run),
           "--executor", "ray", "--ray-address", cluster]
    box["stderr"] = run.parent / "bisect.stderr"
    with open(run.parent / "bisect.stdout", "w") as so, open(box["stderr"], "w") as se:
        box["proc"] = subprocess.Popen(cmd, stdout=so, stderr=se, text=True)
    try:
        yield box
    finally:
        if box["proc"].poll() is None:
            box["proc"].send_signal(signal.SIGINT)
            try:
                box["proc"].wait(60)
            except subprocess.TimeoutExpired:
                box["proc"].kill()
        subprocess.run(["rm", "-rf", storage], check=False)


def test_real_vllm_trial_scheduled_through_ray_stalls_and_its_bundle_arrives_in_the_run_directory(
        real_trial: dict) -> None:
    """GIVEN a real vLLM on CPU launched with --inject stall-after=8 WHEN `repro bisect --executor ray` runs one
    trial of it on the Ray cluster THEN the trial is a hang (a classified stall) with exposure before the stall, the heartbeats and
    the outcome are in the driver's journal with the node that ran it, the bundle (tarball and directory)
    is in <run>/trials/step0000-slot0, and no process of that server is left."""
    require_vllm()
    import psutil

    real_trial["proc"].wait(timeout=600)
    run = real_trial["run"]
    err = real_trial["stderr"].read_text()
    assert real_trial["proc"].returncode == 0, err[-3000:]
    recs = records(run)
    end = next(r for r in recs if r["type"] == "trial-end")
    assert not end["skipped"], end
    assert end["hung"] is True and 3.0 <= end["exposure"] <= 60.0
    assert end["detail"]["class"] in ("engine-stall", "queue-stall", "client-stall")  # classified, not server-dead
    assert end["detail"]["node"] == "127.0.0.1" and end["detail"]["evidence"]["via"] == "object-store"
    trial = next(r for r in recs if r["type"] == "trial")
    assert trial["executor"] == "ray" and trial["node_id"]
    assert any(r["type"] == "heartbeat" and r["exposure"] > 0 for r in recs)
    home = run / "trials" / "step0000-slot0"
    assert Path(end["detail"]["dir"]) == home
    summary = json.loads((home / "summary.json").read_text())
    assert summary["outcome"] == "stall" and summary["capture"]["status"] == "done"
    assert (home / "bundle-001").is_dir() and list(home.glob("bundle-001*.tar.gz")), sorted(os.listdir(home))
    assert (home / "server.log").stat().st_size > 0
    minimal = json.loads((run / "minimal.json").read_text())
    assert minimal["status"] == "minimal" and minimal["rate"]["hangs"] >= 1
    assert "executor: ray" in err and "on 127.0.0.1" in err
    cmd = json.loads((home / "scenario.json").read_text())["server_command"]
    port = cmd[cmd.index("--port") + 1]
    left = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and "--port" in p.info["cmdline"]
            and port in p.info["cmdline"]]
    assert not left, f"vLLM processes left: {[p.pid for p in left]}"
