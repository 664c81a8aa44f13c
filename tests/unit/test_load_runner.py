"""run_stress end to end against benchmarks/fast_endpoint.py (in-process, loopback): the runner's contracts
without a vLLM.

Contract: a --requests budget is sent exactly; every hidden-state file is verified
and consumed; summary.json counts equal requests.jsonl; at concurrency above 100 no
request starves in the client's own connection pool (the server sees the full
concurrency and no client timeout happens while it answers fast); responses
without a file (or with a failed check) never leak a concurrency slot.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from repro.load.records import count_records
from repro.load.runner import run_stress
from repro.scenario import DetectSettings
from tests.helpers_endpoint import endpoint_factory  # noqa: F401  (fixture)
from tests.helpers_endpoint import stress_scenario as scenario


def test_request_budget_sent_exactly_files_consumed_and_counts_match(endpoint_factory, tmp_path: Path) -> None:
    ep = endpoint_factory(latency=0.005)
    run = tmp_path / "run"
    res = run_stress(scenario(ep.url, requests=300), run)
    assert res.exit_code == 0 and res.outcome == "clean"
    s = json.loads((run / "summary.json").read_text())
    recount = count_records(run / "requests.jsonl")
    assert recount["total"] == s["requests"]["total"] == 300 == ep.state.requests
    assert recount["files_ok"] == s["files"]["verified"] == 300 and s["files"]["bad"] == 0
    assert os.listdir(tmp_path / "store") == []  # every file and every .lock consumed
    for name in ("scenario.json", "requests.jsonl", "timeline.csv", "events.jsonl", "summary.json"):
        assert (run / name).exists()


def test_no_starvation_in_the_client_pool_above_100_concurrency(endpoint_factory, tmp_path: Path) -> None:
    """Concurrency 160 (> aiohttp's default 100-connection pool), server answers in 0.3 s: the server sees
    all 160 at once (a 100-connection pool caps that at 100) and no request times out in the client
    (timeout 30 s: 100x the server's time, so a loaded test machine does not count as starvation)."""
    ep = endpoint_factory(latency=0.3)
    res = run_stress(scenario(ep.url, concurrency=160, requests=1600, request_timeout=30.0), tmp_path / "run")
    assert res.exit_code == 0
    assert res.counts["timeouts"] == 0 and res.counts["attempt_timeouts"] == 0 and res.counts["ok"] == 1600
    assert ep.max_in_flight == 160


def test_responses_without_a_file_never_leak_a_slot(endpoint_factory, tmp_path: Path) -> None:
    """No hidden_states_path (extraction off): each request is recorded with file error no-path, and the
    run still sends its whole budget (far more than the backlog bound of max(64, 4 x concurrency))."""
    ep = endpoint_factory(files=False)
    res = run_stress(scenario(ep.url, concurrency=4, requests=400), tmp_path / "run")
    assert res.counts["total"] == 400 == ep.state.requests
    assert res.files["errors"] == {"no-path": 400}


def test_chat_workload_and_mixed_share(endpoint_factory, tmp_path: Path) -> None:
    ep = endpoint_factory()
    res = run_stress(scenario(ep.url, workload="mixed:0.5", requests=200, max_tokens=4), tmp_path / "run")
    kinds = res.counts["by_kind"]
    assert kinds.get("hidden-states", 0) + kinds.get("chat", 0) == 200 and 60 < kinds.get("chat", 0) < 140
    assert res.files["verified"] == 200 and os.listdir(tmp_path / "store") == []


def test_a_sibling_stall_ends_the_run_cleanly_with_its_reason(endpoint_factory, tmp_path: Path) -> None:
    """bisect --parallel: when another trial of the step sets the shared event, this run stops (exit 0,
    stop reason sibling-stall) long before its duration; its exposure so far is clean exposure."""
    ep = endpoint_factory(latency=0.01)
    group = threading.Event()
    threading.Timer(2.0, group.set).start()
    run = tmp_path / "run"
    res = run_stress(scenario(ep.url, requests=None, duration=600.0), run, group_stop=group)
    assert res.exit_code == 0 and res.outcome == "clean" and res.stall is None
    stops = [json.loads(ln) for ln in (run / "events.jsonl").read_text().splitlines()
             if json.loads(ln).get("event") == "stop"]
    assert [e["reason"] for e in stops] == ["sibling-stall"]
    assert 0 < res.exposure_s < 600.0


def test_own_stall_sets_the_shared_event_for_the_siblings(endpoint_factory, tmp_path: Path) -> None:
    """A run that finds a stall tells its siblings: the server stops answering, the detector calls
    client-stall/engine-stall, and the shared event is set."""
    ep = endpoint_factory(latency=0.01)
    group = threading.Event()
    sc = scenario(ep.url, requests=None, duration=600.0, request_timeout=600.0)
    sc.detect = DetectSettings(window=2, startup_grace=0, poll_interval=0.5)
    # every request from 2 s on takes 6 s: a stall for a 2 s window, short enough to let the endpoint close
    threading.Timer(2.0, lambda: setattr(ep.args, "latency", 6.0)).start()
    res = run_stress(sc, tmp_path / "run", group_stop=group)
    assert res.exit_code == 1 and res.stall is not None
    assert group.is_set()


def test_the_events_file_says_t_is_seconds_since_the_load_start(endpoint_factory, tmp_path: Path) -> None:
    """events.jsonl opens with the repro.events line (t: seconds since the load start, origin in epoch
    seconds); the run's events follow, numbered, with the start event at t ~ 0."""
    from repro.monitor.events import read_events

    ep = endpoint_factory(latency=0.005)
    run = tmp_path / "run"
    run_stress(scenario(ep.url, requests=20), run)
    head = json.loads((run / "events.jsonl").read_text().splitlines()[0])
    assert (head["schema"], head["version"], head["event"]) == ("repro.events", 2, "events")
    assert "the load start" in head["t_is"] and head["origin"] > 1e9
    events = read_events(run / "events.jsonl")
    assert events[0]["event"] == "start" and events[0]["seq"] == 1 and 0.0 <= events[0]["t"] < 1.0
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
