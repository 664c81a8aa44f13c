#!/usr/bin/env python3
"""How long the end-of-run report takes for a long stress run: `repro report` on a synthetic run directory.

    python benchmarks/report_build.py [--dir /dev/shm/repro-bench-report] [--requests 1000000] [--hours 6]

Writes a run directory the shape stress writes (requests.jsonl with N verified hidden-state requests spread over
the duration, one timeline.csv row a second, summary.json, scenario.json, events.jsonl), then times
repro.report.write_report on it (reading requests.jsonl is most of it), once cold and once warm. Removes the
directory at the end. One JSON line of results on stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import time
from pathlib import Path

from repro.load.runner import TIMELINE_FIELDS


def make_run(d: Path, n: int, seconds: float, seed: int = 0) -> None:
    rnd = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "requests.jsonl", "w") as f:
        for i in range(n):
            lat = rnd.uniform(0.05, 0.4)
            rec = {"seq": i, "kind": "hidden-states", "t_start": round(i * seconds / n, 4), "latency": round(lat, 6),
                   "status": "ok", "attempts": 1, "http_status": 200, "prompt_tokens": 700, "completion_tokens": 1,
                   "file": {"ok": True, "path": f"/dev/shm/hs/cmpl-{i:016x}-0-00000000.safetensors", "bytes": 720088,
                            "shape": [700, 2, 128], "consumed": "deleted", "seconds": 0.0012, "lock_wait": 0.0},
                   "client_s": {"prompt_wait": 1.2e-05, "check": 0.0012}}
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
    wall0 = time.time() - seconds
    with open(d / "timeline.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TIMELINE_FIELDS)
        for t in range(int(seconds)):
            done = int(n * t / seconds)
            w.writerow([t, round(wall0 + t, 3), 32, 0, done + 32, done, done, 0, 0, 28.0, 2.0, 30.0, 0.01,
                        done * 700, done, 0.94, "", "healthy", "", done, "", None, None, None])
    (d / "scenario.json").write_text(json.dumps({"load": {"concurrency": 32, "workload": "hidden-states",
                                                          "prompt_len": [128, 2048], "duration": seconds}}))
    (d / "events.jsonl").write_text(json.dumps({"t": 0.0, "event": "start"}) + "\n")
    (d / "summary.json").write_text(json.dumps({
        "schema": "repro.stress.summary", "version": 1, "outcome": "clean", "exit_code": 0, "load_seconds": seconds,
        "exposure_seconds": seconds, "requests": {"total": n, "ok": n}, "files": {"verified": n, "bad": 0},
        "fidelity": {"concurrency": 32, "mean": 0.94}}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/dev/shm/repro-bench-report")
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--hours", type=float, default=6.0)
    a = ap.parse_args()
    from repro.report import write_report

    d = Path(a.dir)
    shutil.rmtree(d, ignore_errors=True)
    try:
        make_run(d, a.requests, a.hours * 3600)
        size = (d / "requests.jsonl").stat().st_size
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            res = write_report(d)
            times.append(time.perf_counter() - t0)
        print(json.dumps({"requests": a.requests, "hours": a.hours, "requests_jsonl_mb": round(size / 1e6, 1),
                          "timeline_rows": int(a.hours * 3600), "first_s": round(times[0], 2),
                          "second_s": round(times[1], 2), "html_kb": round(res.html.stat().st_size / 1e3)}))
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
