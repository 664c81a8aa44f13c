"""Capture time with and without detect-secrets' detectors, on a real stalled vLLM (CPU build, tiny model).

    flock /tmp/vllm-cpu.lock .venv/bin/python benchmarks/capture_scan.py [--rounds 3] [--log-mb 4] [-o FILE]

Starts one server with the fault plugin's control file, stalls its scheduler (`stall-after=0` and one request
in flight) and captures it `--rounds` times with the scanner on and off, alternating (off: repro's own rules
only; the last check still reads every file back). collect-env is off: it runs in parallel and would hide the
difference. Each configuration is measured twice: with the server's own log (a fresh server's, ~20 KB) and
after `--log-mb` MB of realistic log lines (uvicorn access lines and stats lines, 9:1) are appended, so the
tail capture keeps is full (4 MB by default). Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from repro.capture.request import CaptureRequest
from repro.capture.run import capture
from repro.scenario import CaptureSettings, ServerSettings
from repro.server.launcher import VllmServer


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pad_log(path: Path, mb: float, pid: int) -> None:
    rnd = random.Random(1)
    with open(path, "a") as f:
        written = 0
        while written < mb * 1e6:
            if rnd.random() < 0.9:
                ln = (f"(APIServer pid={pid}) INFO:     127.0.0.1:{rnd.randint(30000, 60000)} - "
                      '"POST /v1/completions HTTP/1.1" 200 OK\n')
            else:
                ln = (f"(APIServer pid={pid}) INFO 11-28 17:08:{rnd.randint(10, 59)} [loggers.py:335] Engine 000: "
                      f"Avg prompt throughput: {rnd.random() * 1000:.1f} tokens/s, Avg generation throughput: "
                      "3385.2 tokens/s, Running: 31 reqs, Waiting: 0 reqs, CPU KV cache usage: 0.4%, "
                      "Prefix cache hit rate: 0.0%\n")
            f.write(ln)
            written += len(ln)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--log-mb", type=float, default=4.0)
    ap.add_argument("-o", "--out", default="benchmarks/capture_scan_results.json")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="repro-bench-scan-", dir="/dev/shm"))
    control = work / "inject.control"
    srv = VllmServer(ServerSettings(port=_free_port(), storage=str(work / "hs"), inject_control=str(control)),
                     work / "serve")
    rows: list[dict[str, object]] = []
    try:
        srv.start()
        srv.wait_ready(timeout=300)
        control.write_text("stall-after=0")
        body = json.dumps({"model": srv.model_name, "prompt": list(range(1, 40)), "max_tokens": 1}).encode()
        req = urllib.request.Request(srv.url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        def in_flight() -> None:  # the request the stalled scheduler holds; it ends when the server stops
            try:
                urllib.request.urlopen(req, timeout=3600).read()
            except OSError:
                pass

        threading.Thread(target=in_flight, daemon=True).start()
        time.sleep(5)
        n = 0
        for log in ("server log", f"+{a.log_mb:g} MB log"):
            if log != "server log":
                _pad_log(srv.log_path, a.log_mb, srv.pid or 0)
            for k in range(a.rounds):
                for scan in (True, False):
                    n += 1
                    s = CaptureSettings(samples=3, interval=2.0, collect_env=False, secret_scan=scan)
                    t0 = time.monotonic()
                    b = capture(CaptureRequest(out_dir=work / f"b{n}", settings=s, root_pid=srv.pid, url=srv.url,
                                               log_path=srv.log_path))
                    wall = time.monotonic() - t0  # the manifest's duration ends before the last check and packing
                    m = b.manifest
                    rows.append({"log": log, "scanner": scan, "round": k, "capture_s": round(wall, 3),
                                 "before_finish_s": m["duration"],
                                 "stacks_s": m["stacks"]["duration"], "last_check_s": m["last_check"]["seconds"],
                                 "bytes": sum(p.stat().st_size for p in b.dir.rglob("*") if p.is_file()),
                                 "found": m["redaction"]["total"] + m["last_check"]["total"],
                                 "packed": b.tarball is not None})
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        control.write_text("release")
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary = []
    for log in dict.fromkeys(str(r["log"]) for r in rows):
        for scan in (True, False):
            sel = [r for r in rows if r["log"] == log and r["scanner"] == scan]
            summary.append({"log": log, "scanner": scan, "n": len(sel),
                            **{f"median_{k}": round(statistics.median(float(r[k]) for r in sel), 2)  # type: ignore[arg-type]
                               for k in ("capture_s", "before_finish_s", "stacks_s", "last_check_s")},
                            "max_stacks_s": max(float(r["stacks_s"]) for r in sel),  # type: ignore[arg-type]
                            "bundle_mb": round(statistics.median(int(r["bytes"]) for r in sel) / 1e6, 2)})  # type: ignore[arg-type]
    print(f"{'log':<14} {'scanner':<8} {'capture s':>10} {'stacks s':>9} {'max stacks':>10} {'check s':>8} {'MB':>6}")
    # capture s: wall time of capture() (stacks, writing with redaction, analysis, plot, last check, packing)
    for s_ in summary:
        print(f"{s_['log']:<14} {'on' if s_['scanner'] else 'off':<8} {s_['median_capture_s']:>10} "
              f"{s_['median_stacks_s']:>9} {s_['max_stacks_s']:>10} {s_['median_last_check_s']:>8} {s_['bundle_mb']:>6}")
    Path(a.out).write_text(json.dumps({"schema": "repro.bench.capture-scan", "version": 1,
                                       "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                                       "rounds": a.rounds, "summary": summary, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
