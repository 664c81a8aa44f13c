"""The subprocess a Ray node runs for one real trial or stress replica.

``python -m repro.executors.node_job JOB.json`` -- started by :class:`repro.executors.node.NodeRunner`
in a session of its own. It asks the kernel for SIGTERM when the actor that started it dies
(``PR_SET_PDEATHSIG``), and SIGTERM ends it the way Ctrl-C ends ``repro stress``: the load stops,
partial results are written and the vLLM server's process group is stopped.

Job kinds:

``trial``   one bisect trial: :meth:`repro.executors.local.StressBackend.run_trial` (the local
            executor's own code: launcher, stress run, outcome), with hooks that write each
            heartbeat and the outcome as JSON lines to the status file the actor follows.
``stress``  one soak replica: :func:`repro.load.runner.run_stress` (launches its own server).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when the actor that started it dies (Linux); exit now if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent:
        sys.exit(130)


class FileHooks:
    """The driver's Hooks as seen from a node: JSON lines the actor forwards to the journal."""

    def __init__(self, path: Path, trial: int) -> None:
        self.f = open(path, "a", buffering=1)
        self.trial = trial

    def write(self, **rec: Any) -> None:
        self.f.write(json.dumps({"t": round(time.time(), 3), **rec}, default=str) + "\n")

    def trial_start(self, slot: int, **info: Any) -> int:
        self.write(event="trial-start", slot=slot, **info)
        events = Path(info["dir"]) / "events.jsonl" if info.get("dir") else None
        if events is not None:
            self.write(event="events", path=str(events))
        return self.trial

    def heartbeat(self, trial: int, exposure: float) -> None:
        self.write(event="heartbeat", exposure=round(exposure, 3))

    def trial_end(self, trial: int, hung: bool, exposure: float, trial_time: float, skipped: bool = False,
                  detail: dict[str, Any] | None = None, uptime: float | None = None,
                  work: dict[str, Any] | None = None) -> None:
        self.write(event="trial-end", hung=hung, exposure=round(exposure, 3), trial_time=round(trial_time, 3),
                   skipped=skipped, detail=detail or {}, uptime=uptime, work=work or {})
        self.end = {"hung": hung, "exposure": exposure, "trial_time": trial_time, "skipped": skipped,
                    "detail": detail or {}, "uptime": uptime, "work": work or {}}


def run_trial(job: dict[str, Any], status: FileHooks) -> dict[str, Any]:
    from repro.bisect.space import Change, Config, SearchSpace
    from repro.executors.local import StressBackend

    sp = job["space"]
    space = SearchSpace(sp["concurrency"][0], sp["concurrency"][1], tuple(Change.parse(c) for c in sp["changes"]),
                        plain_storage=sp["plain_storage"], max_trial=sp.get("max_trial"), budget=sp.get("budget"),
                        step=sp.get("step", 1))
    backend = StressBackend(job["scenario"], space, Path(job["out"]), parallel=1,
                            heartbeat=float(job.get("heartbeat", 5.0)), say=lambda s: print(s, flush=True))
    r = backend.run_trial(job["step"], job["slot"], Config.from_dict(job["config"]), float(job["duration"]), status)
    end = getattr(status, "end", {})
    return {"hung": r["hung"], "exposure": r["exposure"], "trial_time": r["trial_time"], "skipped": r["skipped"],
            "reason": r.get("reason", ""), "detail": end.get("detail", {}), "uptime": r.get("uptime"),
            "work": r.get("work") or {},
            "phase": "captured" if r["hung"] else ("skipped" if r["skipped"] else "clean")}


def run_replica(job: dict[str, Any], status: FileHooks) -> dict[str, Any]:
    from repro.load.display import Progress
    from repro.load.runner import run_stress

    out = Path(job["out"]) / job["evidence"]
    out.mkdir(parents=True, exist_ok=True)
    status.write(event="events", path=str(out / "events.jsonl"))
    scn = job["scenario"]
    scn.out_dir = str(out)
    with open(out / "progress.log", "w") as log:
        res = run_stress(scn, out, progress=Progress(tty=False, every=30.0, stream=log))
    st = (res.summary or {}).get("stall") or {}
    cap = (res.summary or {}).get("capture") or {}
    return {"hung": res.exit_code == 1, "exposure": res.exposure_s, "load_s": res.load_s,
            "exit_code": res.exit_code, "outcome": res.outcome, "error": res.error,
            "skipped": res.exit_code not in (0, 1, 130), "stall_class": st.get("class"),
            "since_s": st.get("since_s"), "capture": cap.get("status"),
            "phase": {"stall": "captured" if cap.get("status") == "done" else "stalled",
                      "interrupted": "stopped"}.get(res.outcome, res.outcome)}


def read_job(path: Path) -> dict[str, Any]:
    """job.json as the node runner wrote it (repro.trial-job), its scenario typed again."""
    from repro.formats import TRIAL_JOB_FORMAT, read_json
    from repro.scenario import Scenario

    job = read_json(TRIAL_JOB_FORMAT, path)
    return {**job, "scenario": Scenario.from_dict(job["scenario"], f"{path}: scenario")}


def main(argv: list[str]) -> int:
    job = read_job(Path(argv[0]))
    die_with_parent(int(job["parent_pid"]))
    status = FileHooks(Path(job["status"]), int(job.get("trial", -1)))

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if job["kind"] == "trial":  # run_stress runs in a thread there: the main thread turns SIGTERM into Ctrl-C
        signal.signal(signal.SIGTERM, on_term)
    try:
        res = run_trial(job, status) if job["kind"] == "trial" else run_replica(job, status)
    except KeyboardInterrupt:
        end = getattr(status, "end", None)
        status.write(event="result", interrupted=True, hung=False, skipped=True,
                     exposure=0.0 if end is None else end["exposure"], reason="stopped", phase="stopped")
        return 130
    except Exception as exc:  # noqa: BLE001 - reported to the driver as a skipped trial with its reason
        from repro.errors import ReproError

        msg = exc.message.splitlines()[0] if isinstance(exc, ReproError) else f"{type(exc).__name__}: {exc}"
        status.write(event="result", hung=False, skipped=True, exposure=0.0, reason=msg[:300], phase="failed",
                     error_type=type(exc).__name__, usage=isinstance(exc, ReproError) and exc.exit_code == 2)
        return 3
    status.write(event="result", **res)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
