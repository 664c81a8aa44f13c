"""Driving a real `repro watch` subprocess in integration tests: fast detector flags, its events, its end."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from repro.monitor.events import read_events

FAST = ["--poll-interval", "0.5", "--window", "4", "--min-bad", "3", "--startup-grace", "0",
        "--capture-samples", "2", "--capture-interval", "1", "--no-collect-env", "--capture-budget", "60",
        "--startup-timeout", "300"]


def events(out: Path) -> list[dict]:
    p = out / "events.jsonl"
    return read_events(p, epoch=True) if p.exists() else []  # t in epoch seconds: compared with time.time()


def wait_event(out: Path, proc: subprocess.Popen[str], kind: str, count: int = 1, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in events(out) if e["event"] == kind]
        if len(found) >= count:
            return found[count - 1]
        if proc.poll() is not None:
            raise AssertionError(f"watch exited with {proc.returncode} before {kind!r}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {kind!r} event within {timeout} s: {[e['event'] for e in events(out)]}")


def end_watch(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM to watch only (it stops its server's group itself); a kill of its group if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started for watch
        _, err = proc.communicate()
    return proc.returncode, err
