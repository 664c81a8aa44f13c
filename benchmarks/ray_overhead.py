"""Per-trial overhead of the Ray executor against the local executor, measured side by side.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 python benchmarks/ray_overhead.py [--trials 20] [--address HOST:PORT]

Without --address it starts a loopback cluster (a head with 1 CPU and a worker node with 2 CPUs,
``ray.cluster_utils.Cluster``) and shuts it down at the end. Two measurements:

1. scheduling: the same zero-length simulated trials through ``SimBackend`` (local) and
   ``RayBackend`` (one actor per trial: placement, job, heartbeat polling, outcome, kill), each
   step through the journal, so the difference is what Ray adds to every trial;
2. evidence transfer: a trial directory of a given size packed on a node, sent through the object
   store and unpacked in the run directory, against copying the same directory locally.

Prints a markdown table (the numbers in BENCHMARKS.md come from it).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repro.bisect.driver import Hooks  # noqa: E402
from repro.bisect.journal import Journal  # noqa: E402
from repro.bisect.sim import SimBackend, model_from_dict  # noqa: E402
from repro.bisect.space import Config, SearchSpace  # noqa: E402
from repro.executors.cluster import Ask, connect  # noqa: E402
from repro.executors.node import pack_dir, unpack_into  # noqa: E402
from repro.executors.ray_backend import RayBackend  # noqa: E402


def q(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"{statistics.median(xs) * 1000:.0f} ms (p90 {xs[int(0.9 * (len(xs) - 1))] * 1000:.0f})"


def steps(backend: object, n: int, run: Path) -> list[float]:
    j = Journal(run / "journal.jsonl")
    j.open()
    out = []
    for step in range(n):
        t0 = time.perf_counter()
        backend.run_step(step, Config(4, frozenset()), 3600.0, Hooks(j, step, step))  # type: ignore[attr-defined]
        out.append(time.perf_counter() - t0)
    j.close()
    return out


def make_dir(root: Path, size: int) -> Path:
    d = root / f"trial-{size}"
    (d / "bundle-001").mkdir(parents=True, exist_ok=True)
    (d / "summary.json").write_text("{}")
    (d / "bundle-001" / "stacks.bin").write_bytes(os.urandom(size))  # incompressible: the worst case
    return d


def report(a: argparse.Namespace, local: list[float], remote: list[float], rows: list, rb: RayBackend,
           work: Path) -> None:
    import ray

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; Ray {ray.__version__}; {a.trials} trials each\n")
    print("| per trial | local executor | Ray executor | Ray overhead |")
    print("|---|---|---|---|")
    print(f"| scheduling, first trial (a new actor: worker process start and placement) | {local[0] * 1000:.0f} ms | "
          f"{remote[0] * 1000:.0f} ms | {(remote[0] - local[0]) * 1000:.0f} ms |")
    print(f"| scheduling, later trials (the step's actor reused; zero-length simulated trial, journaled) | "
          f"{q(local[1:])} | {q(remote[1:])} | {(statistics.median(remote[1:]) - statistics.median(local[1:])) * 1000:.0f} ms |")
    fresh = []
    for i in range(5):  # a new actor every time: what a step with more slots, or after a lost actor, pays
        rb.close()
        fresh.append(steps(rb, 1, work / f"fresh-{i}")[0])
    print(f"| scheduling with a new actor each time (5 samples) | - | {q(fresh)} | |")
    for size, tl, tr in rows:
        print(f"| evidence, {size / 1e6:g} MB trial directory | {tl} (local copy; the local executor writes in "
              f"place: 0) | {tr} (pack on node, object store, unpack) | |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--address", default=None)
    ap.add_argument("--sizes", default="200000,5000000,20000000")
    a = ap.parse_args()
    cluster = None
    if a.address is None:
        tmp = Path(tempfile.mkdtemp(prefix="repro-ray-bench-", dir="/dev/shm"))
        os.environ["RAY_TMPDIR"] = str(tmp)
        from ray._private import ray_constants
        from ray.cluster_utils import Cluster

        ray_constants.ENABLE_RAY_CLUSTER = False
        t0 = time.perf_counter()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                                "dashboard_port": 8655,
                                                                "object_store_memory": 200_000_000})
        cluster.add_node(num_cpus=2, object_store_memory=200_000_000)
        cluster.wait_for_nodes()
        print(f"cluster up in {time.perf_counter() - t0:.1f} s at {cluster.address}", file=sys.stderr)
        address = cluster.address
    else:
        address = a.address
    work = Path(tempfile.mkdtemp(prefix="repro-ray-bench-run-", dir="/dev/shm"))
    try:
        session = connect(address, Ask(cpus=1), 1)
        import ray

        space = SearchSpace(1, 4)
        model = model_from_dict(space, {"mean_time_to_hang": "1000h"}, {"seed": 1, "overhead": "0s"})
        local = steps(SimBackend(model), a.trials, work / "local")
        rb = RayBackend(session, work / "ray", mode="simulate", heartbeat=1.0, ask=Ask(cpus=1), model=model)
        remote = steps(rb, a.trials, work / "ray")

        @ray.remote(num_cpus=1)
        def node_pack(size: int) -> bytes:
            root = Path(tempfile.mkdtemp(prefix="repro-ray-bench-node-", dir="/dev/shm"))
            try:
                return pack_dir(make_dir(root, size), 1 << 30)[0]
            finally:
                shutil.rmtree(root, ignore_errors=True)

        rows = []
        for size in (int(s) for s in a.sizes.split(",")):
            tr, tl = [], []
            for i in range(5):
                t0 = time.perf_counter()
                data = ray.get(node_pack.remote(size))
                unpack_into(data, work / f"home-{size}-{i}")
                tr.append(time.perf_counter() - t0)
                src = make_dir(work / f"src-{size}-{i}", size)
                t0 = time.perf_counter()
                shutil.copytree(src, work / f"copy-{size}-{i}")
                tl.append(time.perf_counter() - t0)
            rows.append((size, q(tl), q(tr)))
        report(a, local, remote, rows, rb, work)
        session.close()
    finally:
        if cluster is not None:
            cluster.shutdown()
            shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
