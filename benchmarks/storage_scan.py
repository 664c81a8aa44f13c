#!/usr/bin/env python3
"""Time per storage scan at N files: repro's incremental census vs a naive full listing with stat.

    python benchmarks/storage_scan.py [--dir /dev/shm/repro-bench-scan] [--sizes 10000,200000] [--rounds 5]

Creates N small files (0 bytes, like an orphaned store's inode load), then measures
- first scan (census has to stat every file),
- steady-state rescans (1% new files between scans, like a leaking store),
- the naive approach: os.scandir + stat of every file on every scan,
interleaved in one run so that machine noise hits both alike. Removes its files at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

from repro.storage.census import StorageCensus


def naive_scan(path: Path) -> int:
    total = 0
    with os.scandir(path) as it:
        for e in it:
            if e.name.endswith(".safetensors"):
                total += e.stat(follow_symlinks=False).st_size
    return total


def bench(root: Path, n: int, rounds: int) -> dict[str, float]:
    d = root / f"n{n}"
    d.mkdir(parents=True)
    for i in range(n):
        (d / f"cmpl-{i:08d}-0-deadbeef.safetensors").touch()
    census = StorageCensus.open(d, grace=0)
    t0 = time.perf_counter()
    census.scan()
    first = time.perf_counter() - t0
    inc, naive = [], []
    extra = max(1, n // 100)
    for r in range(rounds):
        for i in range(extra):
            (d / f"new-{r}-{i:06d}.safetensors").touch()
        t0 = time.perf_counter()
        census.scan()
        inc.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        naive_scan(d)
        naive.append(time.perf_counter() - t0)
    shutil.rmtree(d)
    return {"first": first, "incremental": statistics.median(inc), "naive": statistics.median(naive)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/dev/shm/repro-bench-scan")
    ap.add_argument("--sizes", default="10000,200000")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    root = Path(a.dir)
    shutil.rmtree(root, ignore_errors=True)
    print(f"{'files':>8} {'first scan':>11} {'rescan (1% new)':>16} {'naive full stat':>16} {'naive/rescan':>13}")
    try:
        for n in (int(x) for x in a.sizes.split(",")):
            r = bench(root, n, a.rounds)
            print(f"{n:>8} {r['first']*1000:>9.1f}ms {r['incremental']*1000:>14.1f}ms {r['naive']*1000:>14.1f}ms "
                  f"{r['naive']/r['incremental']:>12.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
