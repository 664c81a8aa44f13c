"""Driving a real `repro stress` subprocess in integration tests: the command, its summary and events."""

from __future__ import annotations

import json
import subprocess
import sys
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
