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
from tests.helpers_cli import repro_inprocess as repro_here  # the CLI in-process
from tests.helpers_cli import repro_subprocess as repro

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


def kill_mid_trial(run: Path, first_args: list[str], speed: float) -> tuple[int, float, float, list[dict]]:
    """Start the search, SIGKILL it inside a trial with a few heartbeats; (trial, kill time, exposure run, records)."""
    for attempt in range(5):
        args = ["--resume", str(run)] if attempt else first_args
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
            killed = open_trials.pop()
            start = next(r for r in recs if r["type"] == "trial" and r["trial"] == killed)["t"]
            return killed, kill_time, (kill_time - start) * speed - 60.0, recs  # minus the simulated start-up
    raise AssertionError("never caught a trial in flight")


def test_kill_9_during_a_trial_then_resume_keeps_exposure_equal_to_what_was_run(tmp_path: Path) -> None:
    """GIVEN a search killed with SIGKILL inside a trial WHEN resumed to the end THEN the journal's total
    exposure is what the trials actually ran: the killed one up to its last heartbeat, none counted twice."""
    speed = 20000.0  # virtual seconds per real second
    model = write_model(tmp_path, speed)
    run = tmp_path / "run"
    killed_trial, kill_time, actual, recs = kill_mid_trial(run, ["--simulate", str(model), "--out", str(run)], speed)
    last_beat = max(r["exposure"] for r in recs if r["type"] == "heartbeat" and r["trial"] == killed_trial)
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


AGING_MODEL = """
[space]
concurrency = [1, 8]
changes = ["storage=/mnt/nfs/hs", "timeout=120"]

[hazard]
shape = "onset"
onset = "2h"
mean_time_to_hang = "30m"
threshold = 4
requires = ["storage"]

[sim]
seed = 3
overhead = "60s"
speed = 60000
heartbeat = 0.01
"""


def test_kill_9_during_a_trial_then_resume_keeps_the_uptime_accounting_exact(tmp_path: Path) -> None:
    """GIVEN servers that age (a 2 h onset) and are reused across trials WHEN the search is killed with SIGKILL
    inside a trial and resumed to the end THEN every server's trials are contiguous in its uptime (each
    starts where the last ended), the killed trial's uptime ends at its start plus its last heartbeat, no
    server outlives the kill (the next trials start fresh servers at uptime 0), and every trial's uptime
    span equals its exposure: the journal counts exactly the continuous uptime that was run."""
    model = tmp_path / "model.toml"
    model.write_text(AGING_MODEL)
    run = tmp_path / "run"
    killed, kill_time, _, _ = kill_mid_trial(run, ["--simulate", str(model), "--out", str(run),
                                                   "--hazard-model", "exponential"], 60000.0)
    r = repro("bisect", "--resume", str(run), timeout=300)
    assert r.returncode == 0, r.stderr
    recs = records(run)
    starts = {x["trial"]: x for x in recs if x["type"] == "trial"}
    ends = {x["trial"]: x for x in recs if x["type"] == "trial-end"}
    assert set(starts) == set(ends)
    by_server: dict[str, list[int]] = {}
    for tid in sorted(starts):
        by_server.setdefault(starts[tid]["server"], []).append(tid)
    assert any(len(t) > 1 for t in by_server.values()), "no server served two trials: nothing to check"
    for server, tids in by_server.items():
        assert starts[tids[0]]["uptime_start"] == 0.0, server  # a new server starts at 0
        for a, b in zip(tids, tids[1:]):
            assert starts[b]["uptime_start"] == pytest.approx(ends[a]["uptime"]), (server, a, b)
        for tid in tids:
            assert ends[tid]["uptime"] - starts[tid]["uptime_start"] == pytest.approx(ends[tid]["exposure"], abs=2e-3)
    rec = ends[killed]
    last = max(x["exposure"] for x in recs if x["type"] == "heartbeat" and x["trial"] == killed)
    assert rec["recovered"] and rec["uptime"] == pytest.approx(starts[killed]["uptime_start"] + last, abs=2e-3)
    before = {starts[t]["server"] for t in starts if starts[t]["t"] < kill_time}
    after = [t for t in starts if starts[t]["t"] > kill_time]
    assert after and all(starts[t]["server"] not in before for t in after)
    doc = json.loads((run / "minimal.json").read_text())
    assert doc["status"] == "minimal" and doc["hazard"]["model"] == "exponential"
    hung = [ends[t]["uptime"] for t in ends if ends[t]["hung"]]
    assert sorted(u for v in doc["hang_uptimes_s"].values() for u in v) == pytest.approx(sorted(hung), abs=0.1)


def test_undo_voids_the_last_step_and_log_prints_the_journal(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert repro_here("bisect", "--simulate", str(write_model(tmp_path)), "--out", str(run)).returncode == 0
    steps = read_steps(Journal(run / "journal.jsonl"))
    r = repro_here("bisect", "--undo", str(run))
    assert r.returncode == 0 and f"undid step {steps[-1].step}" in r.stdout
    assert read_steps(Journal(run / "journal.jsonl"))[-1].undone
    log = repro_here("bisect", "--log", str(run))
    assert log.returncode == 0 and "start search" in log.stdout and "decision:" in log.stdout


def test_resume_of_a_finished_aging_search_replays_the_same_model_and_runs_nothing(tmp_path: Path) -> None:
    """The test of memorylessness is seeded from the runs as journaled: a resumed search computes the same
    p-values and shape interval, so it takes the same decisions and every step replays."""
    model = tmp_path / "model.toml"
    model.write_text(AGING_MODEL.replace("speed = 60000", "speed = 0"))
    run = tmp_path / "run"
    assert repro_here("bisect", "--simulate", str(model), "--out", str(run), "--baseline-hangs", "5").returncode == 0
    first = json.loads((run / "minimal.json").read_text())
    n_steps = len(read_steps(Journal(run / "journal.jsonl")))
    assert first["hazard"]["model"] == "aging"
    r = repro_here("bisect", "--resume", str(run))
    assert r.returncode == 0, r.stderr
    again = json.loads((run / "minimal.json").read_text())
    assert len(read_steps(Journal(run / "journal.jsonl"))) == n_steps
    assert again["hazard"]["test"] == first["hazard"]["test"] and again["config"] == first["config"]


def test_a_journal_from_before_the_hazard_model_resumes_memoryless(tmp_path: Path) -> None:
    """A start record without hazard_model (an older repro) resumes with the memoryless model it ran with."""
    run = tmp_path / "run"
    assert repro_here("bisect", "--simulate", str(write_model(tmp_path)), "--out", str(run)).returncode == 0
    lines = (run / "journal.jsonl").read_text().splitlines()
    head = json.loads(lines[0])
    del head["settings"]["hazard_model"]
    (run / "journal.jsonl").write_text("\n".join([json.dumps(head, sort_keys=True), *lines[1:]]) + "\n")
    r = repro_here("bisect", "--resume", str(run))
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "minimal.json").read_text())["settings"]["hazard_model"] == "exponential"
