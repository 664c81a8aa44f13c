"""What runs on a Ray node: the actor that hosts one trial or replica, and packing its evidence.

:class:`NodeRunner` is a plain class; :mod:`repro.executors.ray_backend` and
:mod:`repro.executors.fleet` turn it into a Ray actor (``ray.remote(...)``) asking for the
trial's CPUs/GPUs. It runs a job and reports progress:

* ``sim`` jobs (``repro bisect --simulate``) run in the actor itself: the same draws as
  :class:`repro.bisect.sim.SimBackend` for the same seed and step, so a search through Ray
  makes the same decisions as one on this machine;
* ``trial`` and ``stress`` jobs run as ``python -m repro.executors.node_job`` in a session of
  their own, which starts its own vLLM server with the same launcher as ``repro serve`` and
  stops it by process group. The job asks the kernel for SIGTERM when the actor dies
  (``PR_SET_PDEATHSIG``), so a killed actor does not leave vLLM behind.

The actor keeps the latest progress (phase, exposure since the load began) for the driver's
``status()`` calls; heartbeats reach the driver's journal through those calls, so a lost node
loses at most one poll of exposure.

Evidence (the trial directory: server log, requests, timeline, events, summary, bundle) comes
home as a tar.gz through Ray's object store when it is under the transfer budget, or stays in
a shared ``--artifact-dir`` that the driver copies from.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from repro.formats import TRIAL_JOB_FORMAT, stamp

SCRATCH_PARENT = "/dev/shm" if os.path.isdir("/dev/shm") else None
BIG_FILE = 1 << 20  # files above this are left out when a directory must be trimmed to fit


def job_file(job: dict[str, Any]) -> dict[str, Any]:
    """job.json for the node job process: the job with its Scenario serialised (repro.trial-job, FORMATS.md)."""
    scn = job.get("scenario")
    return stamp(TRIAL_JOB_FORMAT, {**job, "scenario": scn.to_dict() if scn is not None else None})


def pack_dir(src: Path, budget: int) -> tuple[bytes, list[str]]:
    """tar.gz of `src` (arcnames relative to it); files that would break `budget` are left out and listed."""
    files = sorted(p for p in Path(src).rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    skip: set[Path] = set()
    if total > budget:  # drop the biggest files first (bundle tarballs, huge logs) until what is left fits
        for p in sorted(files, key=lambda q: q.stat().st_size, reverse=True):
            if total <= budget or p.stat().st_size <= BIG_FILE:
                break
            skip.add(p)
            total -= p.stat().st_size
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=3) as tar:
        for p in files:
            if p not in skip:
                tar.add(p, arcname=str(p.relative_to(src)))
    return buf.getvalue(), [str(p.relative_to(src)) for p in sorted(skip)]


def unpack_into(data: bytes, dest: Path) -> int:
    """Unpack a :func:`pack_dir` archive into `dest`; refuses members that would land outside it."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    n = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            target = (dest / m.name).resolve()
            if root not in target.parents and target != root:
                raise ValueError(f"archive member {m.name!r} points outside {dest}")
            if not (m.isfile() or m.isdir()):
                continue
            tar.extract(m, dest)
            n += 1
    return n


def sim_trial(job: dict[str, Any], progress: "Progress", stop: threading.Event) -> dict[str, Any]:
    """One slot of a simulated step: the draws of ``SimBackend.run_step`` for this seed and step.

    All `parallel` draws of the step are made (cheap and deterministic) so that this slot knows when
    the first hang of its step happened: in virtual time every slot stops then, as in SimBackend.
    """
    m = job["model"]
    step, slot, n, each = job["step"], job["slot"], job["parallel"], job["each"]
    rng = random.Random(f"{m.seed}:{step}")
    lam = job["rate"]
    draws = [rng.expovariate(lam) if lam > 0 else math.inf for _ in range(n)]
    first = min(draws)
    hung = first < each
    run = first if hung else each
    if m.speed > 0:  # virtual time passes at `speed`, with heartbeats (kill tests, benchmarks)
        progress.set(phase="starting")
        if stop.wait(m.overhead / m.speed):
            return {"stopped": True, "exposure": 0.0}
        t0 = time.monotonic()
        progress.set(phase="loading", exposure=0.0)
        while True:
            done = (time.monotonic() - t0) * m.speed
            if done >= run:
                break
            progress.set(exposure=done)
            if stop.wait(min(m.heartbeat, (run - done) / m.speed)):
                return {"stopped": True, "exposure": progress.get("exposure", 0.0)}
    mine = hung and draws[slot] == first
    progress.set(phase="stalled" if mine else "clean", exposure=run)
    return {"hung": mine, "exposure": run, "trial_time": m.overhead + run, "skipped": False,
            "wall": m.overhead + run, "detail": {"simulated": True, "rate_per_hour": lam * 3600}}


class Progress:
    """Thread-safe latest state of a job: phase (starting, loading, stalled, captured, ...), exposure, ..."""

    def __init__(self) -> None:
        self._d: dict[str, Any] = {"phase": "scheduled", "exposure": 0.0, "updated": time.time()}
        self._lock = threading.Lock()

    def set(self, **kw: Any) -> None:
        with self._lock:
            self._d.update(kw)
            self._d["updated"] = time.time()

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._d.get(key, default)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._d)


def _wall(text: str) -> float | None:
    try:
        whole, _, frac = text.rstrip("Z").partition(".")
        import calendar

        return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))
    except (ValueError, TypeError):
        return None


class _Follow:
    """Reads new JSON lines of a file as it grows (a stress run's events.jsonl, a job's status.jsonl)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.buf = ""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path) as f:
                f.seek(self.pos)
                data = f.read()
                self.pos = f.tell()
        except OSError:
            return []
        self.buf += data
        *lines, self.buf = self.buf.split("\n")
        out = []
        for ln in lines:
            try:
                out.append(json.loads(ln))
            except ValueError:
                continue
        return out


class NodeRunner:
    """Hosts one job on a node (made a Ray actor by the driver; threaded so status() answers while run() runs)."""

    def __init__(self) -> None:
        self.progress = Progress()
        self.stop_event = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.scratch: Path | None = None

    def where(self) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        return {"node_ip": ray.util.get_node_ip_address(), "node_id": ctx.get_node_id(),
                "hostname": socket.gethostname(), "pid": os.getpid(),
                "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def status(self) -> dict[str, Any]:
        return self.progress.snapshot()

    def stop(self) -> bool:
        """Ask the job to end now (the stress run writes its partial results, the server is stopped)."""
        self.stop_event.set()
        p = self.proc
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        return True

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        self.progress = Progress()  # an actor may host one job after another
        self.stop_event = threading.Event()
        self.proc = None
        if job["kind"] == "sim":
            return sim_trial(job, self.progress, self.stop_event)
        return self._run_subprocess(job)

    # -- real trials and replicas ----------------------------------------------------------
    def _run_subprocess(self, job: dict[str, Any]) -> dict[str, Any]:
        t0 = time.monotonic()
        shared = job.get("artifact_dir")
        if shared:
            self.scratch = Path(shared) / job["run_key"] / job["name"]
            self.scratch.mkdir(parents=True, exist_ok=True)
        else:
            self.scratch = Path(tempfile.mkdtemp(prefix=f"repro-ray-{job['name']}-", dir=SCRATCH_PARENT))
        out = self.scratch / "out"
        out.mkdir(exist_ok=True)
        job = {**job, "out": str(out), "status": str(self.scratch / "status.jsonl"), "parent_pid": os.getpid()}
        job_path = self.scratch / "job.json"
        job_path.write_text(json.dumps(job_file(job), default=str))
        status = _Follow(self.scratch / "status.jsonl")
        events: _Follow | None = None
        result: dict[str, Any] | None = None
        self.progress.set(phase="starting", scratch=str(self.scratch))
        with open(self.scratch / "node_job.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "repro.executors.node_job", str(job_path)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd=str(self.scratch))
        load_t0: float | None = None
        suspect_since: float | None = None  # seconds into the load where a suspected stall began
        stopped_at: float | None = None
        from_trial = False  # a bisect trial sends its own heartbeats (the local executor's exposure rule)
        scn = job.get("scenario")
        duration = float(job.get("duration") or (scn.load.duration if scn is not None else 0) or 0)
        while True:
            rc = self.proc.poll()
            for rec in status.read():
                ev = rec.get("event")
                if ev == "result":
                    result = rec
                elif ev == "events":
                    events = _Follow(Path(rec["path"]))
                elif ev == "heartbeat":
                    from_trial = True
                    self.progress.set(exposure=float(rec.get("exposure") or 0.0))
            for ev in (events.read() if events is not None else []):
                kind = ev.get("event")
                if kind == "start":
                    load_t0 = _wall(ev.get("wall", "")) or time.time()
                    self.progress.set(phase="loading")
                elif kind == "detector":
                    suspect = ev.get("state") in ("suspect", "stalled") and ev.get("since") is not None
                    suspect_since = float(ev["since"]) if suspect else None
                elif kind == "stall":
                    self.progress.set(phase="stalled", stall_class=ev.get("class"))
                    if not from_trial and ev.get("since") is not None:
                        self.progress.set(exposure=float(ev["since"]))
                    stopped_at = stopped_at if stopped_at is not None else float(ev.get("since") or 0.0)
                elif kind == "capture":
                    self.progress.set(phase="captured" if ev.get("status") == "done" else "stalled")
                elif kind == "stop":
                    stopped_at = stopped_at if stopped_at is not None else float(ev.get("t") or 0.0)
                    if ev.get("reason") != "stall":
                        self.progress.set(phase="stopping")
            if load_t0 is not None and not from_trial and self.progress.get("phase") in ("loading", "stopping"):
                # never more than the run will be credited: not past a suspected stall, the stop, or the duration
                run = (time.time() - load_t0) if stopped_at is None else stopped_at
                caps = [x for x in (suspect_since, duration or None) if x is not None]
                self.progress.set(exposure=max(0.0, min([run, *caps])))
            if rc is not None:
                for rec in status.read():
                    if rec.get("event") == "result":
                        result = rec
                break
            time.sleep(0.5)
        spent = time.monotonic() - t0
        if result is None:
            tail = ""
            try:
                tail = (self.scratch / "node_job.log").read_text(errors="replace")[-600:]
            except OSError:
                pass
            result = {"hung": False, "exposure": 0.0, "skipped": True, "exit_code": rc,
                      "reason": f"node job exited {rc} without a result: {tail.strip().splitlines()[-1:]}"}
        result.setdefault("trial_time", spent)
        result["node_seconds"] = round(spent, 3)
        result["artifact"] = self._evidence(out / job["evidence"], job)
        self.progress.set(phase=result.get("phase", "done"))
        return result

    def _evidence(self, src: Path, job: dict[str, Any]) -> dict[str, Any]:
        """Bring the directory home: bytes through the object store, or a path in the shared --artifact-dir."""
        if not src.exists():
            return {"kind": "none", "reason": f"{src} was not written"}
        t0 = time.monotonic()
        if job.get("artifact_dir"):
            return {"kind": "path", "path": str(src), "seconds": round(time.monotonic() - t0, 3)}
        data, left = pack_dir(src, int(job.get("budget", 64 << 20)))
        out = {"kind": "bytes", "data": data, "bytes": len(data), "left_out": left,
               "node_path": str(src), "seconds": round(time.monotonic() - t0, 3)}
        if not left:
            shutil.rmtree(self.scratch, ignore_errors=True)  # type: ignore[arg-type]
        return out
