"""The bisect journal: fsync'ed JSON lines, resume after kill -9 without losing or double-counting exposure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repro.bisect.journal import Journal, read_steps, total_exposure
from tests.unit.test_bisect_cli import repro as repro_here  # the CLI in-process

MODEL = """
[space]
concurrency = [1, 8]
changes = ["storage=/mnt/nfs/hs", "timeout=120"]

[hazard]
mean_time_to_hang = "1h"
threshold = 4
requires = ["storage"]

[sim]
seed = 5
overhead = "60s"
speed = {speed}
heartbeat = 0.01
"""


def write_model(tmp: Path, speed: float = 0.0) -> Path:
    p = tmp / "model.toml"
    p.write_text(MODEL.format(speed=speed))
    return p


def repro(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "repro", *args], capture_output=True, text=True, timeout=timeout)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines() if line.strip()]


def test_journal_lines_are_complete_json_and_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.jsonl")
    j.append("start", search="x")
    j.append("step", step=0, config={"concurrency": 1, "changes": []}, cap=10.0)
    j.close()
    with open(j.path, "a") as f:
        f.write('{"type": "trial", "tri')  # the process died inside a write
    j2 = Journal(j.path)
    assert [r["type"] for r in j2.records()] == ["start", "step"]
    j2.open()
    j2.append("trial", trial=0, step=0, slot=0)
    j2.close()
    assert [r["type"] for r in Journal(j.path).records()] == ["start", "step", "trial"]


def test_killed_trial_counts_exposure_up_to_its_last_heartbeat_and_only_once(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.jsonl")
    j.append("start", search="x")
    j.append("step", step=0, config={"concurrency": 1, "changes": []}, cap=100.0)
    j.append("trial", trial=0, step=0, slot=0)
    j.append("trial-end", trial=0, hung=True, exposure=40.0, trial_time=50.0)
    j.append("step", step=1, config={"concurrency": 2, "changes": []}, cap=100.0)
    j.append("trial", trial=1, step=1, slot=0)
    for x in (5.0, 10.0, 15.0):
        j.append("heartbeat", trial=1, exposure=x)
    assert total_exposure(j) == pytest.approx(55.0)
    # a duplicated end record (e.g. written twice across a resume) is not counted twice
    j.append("trial-end", trial=1, hung=False, exposure=15.0, trial_time=0.0, recovered=True)
    j.append("trial-end", trial=1, hung=False, exposure=15.0, trial_time=0.0, recovered=True)
    assert total_exposure(j) == pytest.approx(55.0)
    steps = read_steps(j)
    assert steps[1].trials[0].recovered


def test_simulated_search_writes_minimal_json_and_resume_of_a_finished_search_adds_no_exposure(tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = repro_here("bisect", "--simulate", str(write_model(tmp_path)), "--out", str(run), "--confirm-hangs", "3")
    assert r.returncode == 0, r.stderr
    doc = json.loads((run / "minimal.json").read_text())
    assert doc["status"] == "minimal"
    assert doc["config"] == {"concurrency": 4, "changes": ["storage=/mnt/nfs/hs"]}
    assert doc["rate"]["hangs"] >= 3 and doc["rate"]["ci95_per_hour"][0] < doc["rate"]["per_hour"]
    before = total_exposure(Journal(run / "journal.jsonl"))
    n_steps = len(read_steps(Journal(run / "journal.jsonl")))
    r2 = repro_here("bisect", "--resume", str(run))
    assert r2.returncode == 0, r2.stderr
    assert total_exposure(Journal(run / "journal.jsonl")) == pytest.approx(before)
    assert len(read_steps(Journal(run / "journal.jsonl"))) == n_steps  # everything replayed, nothing re-run
    assert json.loads((run / "minimal.json").read_text())["config"] == doc["config"]


def test_kill_9_during_a_trial_then_resume_keeps_exposure_equal_to_what_was_run(tmp_path: Path) -> None:
    """GIVEN a search killed with SIGKILL inside a trial WHEN resumed to the end THEN the journal's total
    exposure is what the trials actually ran: the killed one up to its last heartbeat, none counted twice."""
    speed = 20000.0  # virtual seconds per real second
    model = write_model(tmp_path, speed)
    run = tmp_path / "run"
    killed_trial, actual = None, 0.0
    for attempt in range(5):
        args = ["--resume", str(run)] if attempt else ["--simulate", str(model), "--out", str(run)]
        proc = subprocess.Popen([sys.executable, "-m", "repro", "bisect", *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        target = None
        while time.monotonic() < deadline and target is None:
            time.sleep(0.02)
            if not (run / "journal.jsonl").exists():
                continue
            recs = records(run)
            ended = {r["trial"] for r in recs if r["type"] == "trial-end"}
            beats: dict[int, int] = {}
            for r in recs:
                if r["type"] == "heartbeat" and r["trial"] not in ended:
                    beats[r["trial"]] = beats.get(r["trial"], 0) + 1
            target = next((t for t, n in beats.items() if n >= 5), None)
        os.kill(proc.pid, signal.SIGKILL)
        kill_time = time.time()
        proc.wait()
        recs = records(run)
        open_trials = {r["trial"] for r in recs if r["type"] == "trial"} - {r["trial"] for r in recs if r["type"] == "trial-end"}
        if open_trials:
            killed_trial = open_trials.pop()
            start = next(r for r in recs if r["type"] == "trial" and r["trial"] == killed_trial)["t"]
            actual = (kill_time - start) * speed - 60.0  # minus the simulated start-up overhead
            last_beat = max(r["exposure"] for r in recs if r["type"] == "heartbeat" and r["trial"] == killed_trial)
            break
    assert killed_trial is not None, "never caught a trial in flight"
    done_before = sum(r["exposure"] for r in recs if r["type"] == "trial-end")

    r = repro("bisect", "--resume", str(run), timeout=300)
    assert r.returncode == 0, r.stderr
    recs = records(run)
    ends = [x for x in recs if x["type"] == "trial-end"]
    assert len({x["trial"] for x in ends}) == len(ends), "a trial was closed twice"
    rec = next(x for x in ends if x["trial"] == killed_trial)
    assert rec["recovered"] and not rec["hung"]
    assert rec["exposure"] == pytest.approx(last_beat)
    assert rec["exposure"] <= actual + 1.0  # never more than was run
    assert rec["exposure"] >= actual - 0.5 * speed  # at most ~one heartbeat (plus scheduling) lost
    # the journal's total = the trials that ended before the kill + the killed one + what ran after the resume
    after = sum(x["exposure"] for x in ends if x["t"] > kill_time and x["trial"] != killed_trial)
    total = total_exposure(Journal(run / "journal.jsonl"))
    assert total == pytest.approx(done_before + last_beat + after)
    assert json.loads((run / "minimal.json").read_text())["status"] == "minimal"


def test_undo_voids_the_last_step_and_log_prints_the_journal(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert repro_here("bisect", "--simulate", str(write_model(tmp_path)), "--out", str(run)).returncode == 0
    steps = read_steps(Journal(run / "journal.jsonl"))
    r = repro_here("bisect", "--undo", str(run))
    assert r.returncode == 0 and f"undid step {steps[-1].step}" in r.stdout
    assert read_steps(Journal(run / "journal.jsonl"))[-1].undone
    log = repro_here("bisect", "--log", str(run))
    assert log.returncode == 0 and "start search" in log.stdout and "decision:" in log.stdout
