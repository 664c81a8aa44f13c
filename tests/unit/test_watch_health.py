"""`repro health` reads the state `repro watch` keeps: healthy only while watch sees the engine serving.

vLLM's /health answers 200 through a stall; the HEALTHCHECK of Dockerfile.gb10 asks repro instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from repro.watch.health import SCHEMA, StateFile, check
from repro.watch.promstats import STATES, WatchMetrics


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("state, healthy", [("healthy", True), ("suspect", True), ("stalled", False),
                                            ("restarting", False), ("starting", False), ("gave-up", False),
                                            ("storage-wait", False)])
def test_only_a_serving_engine_is_healthy(tmp_path: Path, state: str, healthy: bool) -> None:
    clock = Clock()
    f = StateFile(tmp_path / "state.json", url="http://127.0.0.1:8000", clock=clock)
    f.set(state, STATES[state])
    clock.t += 12
    v = check(f.path, max_age=60, now=clock)
    assert v.healthy is healthy
    assert v.line.startswith(f"{state} for 12 s (http://127.0.0.1:8000)"), v.line


def test_a_state_watch_stopped_refreshing_is_unhealthy(tmp_path: Path) -> None:
    """GIVEN watch said healthy 90 s ago and nothing since WHEN checked with --max-age 60 THEN unhealthy: the
    watchdog itself is stuck or gone."""
    clock = Clock()
    f = StateFile(tmp_path / "state.json", clock=clock)
    f.set("healthy", 0)
    clock.t += 90
    v = check(f.path, max_age=60, now=clock)
    assert not v.healthy and "has not updated" in v.line and "90 s" in v.line


def test_every_evaluation_refreshes_the_file_and_transitions_keep_their_start(tmp_path: Path) -> None:
    clock = Clock()
    m = WatchMetrics()
    m.state_file = StateFile(tmp_path / "state.json", clock=clock)
    m.set_state("healthy")
    clock.t += 100
    m.heartbeat()
    data = json.loads((tmp_path / "state.json").read_text())
    assert data["schema"] == SCHEMA and data["version"] == 1 and data["state"] == "healthy" and data["code"] == 0
    assert data["updated"] == 1100.0 and data["since"] == 1000.0
    m.set_state("stalled")
    data = json.loads((tmp_path / "state.json").read_text())
    assert data["state"] == "stalled" and data["code"] == 2 and data["since"] == 1100.0


def test_a_missing_or_foreign_file_is_unhealthy_with_the_reason(tmp_path: Path) -> None:
    v = check(tmp_path / "none.json")
    assert not v.healthy and v.line.startswith("no repro watch state at ")
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something", "version": 1}))
    assert "not a repro watch state file" in check(tmp_path / "other.json").line


def test_the_command_exits_0_healthy_1_unhealthy_2_without_a_file(tmp_path: Path) -> None:
    f = StateFile(tmp_path / "state.json")
    f.set("healthy", 0)
    env_free = {"PATH": "/usr/bin:/bin"}

    def health(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "repro", "health", *args], capture_output=True, text=True,
                              timeout=60, env={**env_free, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})

    r = health(str(tmp_path))  # a watch run directory
    assert r.returncode == 0 and r.stdout.startswith("healthy: healthy for "), r.stdout + r.stderr
    f.set("stalled", 2)
    r = health("--state-file", str(f.path))
    assert r.returncode == 1 and r.stdout.startswith("unhealthy: stalled for "), r.stdout
    r = health()
    assert r.returncode == 2 and r.stderr.startswith("error: say which watch to ask")
