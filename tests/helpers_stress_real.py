"""Driving a real `repro stress` subprocess in integration tests: the command, its summary and events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPRO = str(Path(sys.executable).with_name("repro"))


def stress(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([REPRO, "stress", *args], capture_output=True, text=True, timeout=timeout)


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def events(run: Path) -> list[dict]:
    """The run's events (without the file's first, descriptive line)."""
    from repro.monitor.events import read_events

    return read_events(run / "events.jsonl")


# An abort-heavy client: concurrency 32, no retries, prompts long enough that a short timeout lands after the
# engine has written the request's file (an orphan) for some requests and before the answer for most.
ABORT_SHAPE = ["--concurrency", "32", "--retries", "0", "--prompt-len", "200-250"]
# a short window: a zero-throughput poll counted as an engine stall would end the run
ABORT_DETECTION = ["--window", "4", "--min-bad", "2", "--startup-grace", "2", "--on-stall", "exit"]


def clear_store(storage: Path) -> None:
    """Remove every hidden-state file and lock from a (shared) store."""
    for n in os.listdir(storage):
        if n.endswith((".safetensors", ".lock")):
            (storage / n).unlink(missing_ok=True)


def abort_timeout(url: str, out: Path, lo: float = 0.03, hi: float = 0.4, tries: int = 8) -> float:
    """A --request-timeout under which this server, on this machine now, answers some of ABORT_SHAPE's requests
    but at most `hi` of them (and at least `lo`).

    A fixed timeout cannot do it: 0.08 s answered a share of them in one CI run on a 2-core VM and none of
    24,687 in the next, and a run that answers none has tested nothing (exit 4). 4-s runs from 0.08 s,
    x1.5 up while fewer than `lo` are answered, /1.5 down while more than `hi` are. It returns a second after
    the last run, when that run's aborted requests have written their files; clearing them is the caller's.
    """
    t = 0.08
    seen = []
    for i in range(tries):
        run = out / f"calibrate-{i}"
        stress(["--url", url, *ABORT_SHAPE, "--request-timeout", f"{t:.4f}", "--duration", "4", *ABORT_DETECTION,
                "--out", str(run)], timeout=120)
        req = summary(run)["requests"]
        share = req["ok"] / max(1, req["total"])
        seen.append(f"{t:.3f} s: {req['ok']}/{req['total']}")
        if share < lo:
            t *= 1.5
        elif share > hi:
            t /= 1.5
        else:
            time.sleep(1.0)  # the late writes of its aborted requests
            return round(t, 4)
    raise AssertionError(f"no --request-timeout answers {lo:.0%}-{hi:.0%} of the requests: {'; '.join(seen)}")
