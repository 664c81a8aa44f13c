"""RSS of a long `repro stress` run against benchmarks/fast_endpoint.py (bounded memory, issue 3).

Starts the endpoint (no files, zero latency) and `repro stress --requests N`, samples the
client's RSS every --every seconds, and prints the RSS after the first --after requests
(warm: buffers, histograms and the pool are at size) and at the end, with the growth.

    .venv/bin/python benchmarks/stress_rss.py --requests 1000000 --concurrency 256
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from stress_client_bench import free_port, start_endpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--after", type=int, default=20_000, help="requests before the baseline RSS is taken")
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--out", default="/dev/shm/repro-stress-rss")
    args = ap.parse_args()
    port = free_port()
    ep = start_endpoint(port, 0.0, None)
    url = f"http://127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).parent / "repro"), "stress", "--url", url, "--concurrency", str(args.concurrency),
           "--requests", str(args.requests), "--prompt-len", "128", "--vocab-size", "250",
           "--workload", "chat", "--max-tokens", "1", "--window", "600", "--out", args.out]
    client = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ps = psutil.Process(client.pid)
    samples = []
    base = None
    t0 = time.monotonic()
    try:
        while client.poll() is None:
            time.sleep(args.every)
            with urllib.request.urlopen(url + "/stats", timeout=10) as r:
                n = json.loads(r.read())["requests"]
            try:
                rss = ps.memory_info().rss
            except psutil.NoSuchProcess:
                break
            if rss == 0:  # exiting (zombie): not a sample
                break
            samples.append((round(time.monotonic() - t0, 1), n, rss))
            if base is None and n >= args.after:
                base = (n, rss)
            print(f"{samples[-1][0]:>7} s  {n:>8} requests  RSS {rss / 1e6:7.1f} MB", flush=True)
    finally:
        if client.poll() is None:
            os.killpg(client.pid, signal.SIGINT)
            client.wait(60)
        os.killpg(ep.pid, signal.SIGTERM)
        ep.wait(10)
    last = samples[-1] if samples else None
    peak = max((s[2] for s in samples), default=0)
    result = {"requests": last[1] if last else 0, "seconds": last[0] if last else 0,
              "baseline": {"requests": base[0], "rss_mb": round(base[1] / 1e6, 1)} if base else None,
              "end_rss_mb": round(last[2] / 1e6, 1) if last else None, "peak_rss_mb": round(peak / 1e6, 1),
              "growth_mb": round((peak - base[1]) / 1e6, 1) if base else None}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
