"""--client-procs N: one run's request path spread over N client processes, against benchmarks/fast_endpoint.py.

Contract: the --requests budget is sent exactly, split over the processes; every hidden-state file is
verified and consumed; requests.jsonl (written by the run's process from the processes' batches) equals
summary.json's counts and has one record per request with unique seqs; every process sent; the
storage census counts the processes' claims (no orphan); a Poisson rate is split, not multiplied;
the counters merge exactly; settings that cannot be split are refused with a one-line error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from repro.errors import UsageError
from repro.load import shards
from repro.load.records import LogHistogram, RequestRecord, RunStats, count_records
from repro.load.runner import run_stress
from tests.helpers_endpoint import endpoint_factory  # noqa: F401  (fixture)
from tests.helpers_endpoint import stress_scenario as scenario


def test_a_request_budget_over_three_client_processes_is_sent_once_verified_and_recorded(
        endpoint_factory, tmp_path: Path) -> None:
    ep = endpoint_factory(latency=0.005)
    run = tmp_path / "run"
    scn = scenario(ep.url, requests=301, concurrency=8, client_procs=3)
    scn.storage_path = str(tmp_path / "store")
    res = run_stress(scn, run)
    assert res.exit_code == 0 and res.outcome == "clean", res.error
    s = json.loads((run / "summary.json").read_text())
    recount = count_records(run / "requests.jsonl")
    assert recount["total"] == s["requests"]["total"] == 301 == ep.state.requests
    assert recount["files_ok"] == s["files"]["verified"] == 301 and s["files"]["bad"] == 0
    seqs = [json.loads(line)["seq"] for line in (run / "requests.jsonl").read_text().splitlines()]
    assert len(set(seqs)) == 301
    by_proc = Counter(q % 3 for q in seqs)
    assert by_proc == {0: 101, 1: 100, 2: 100}  # each process its share, none idle
    assert s["client"]["processes"] == 3
    assert s["storage"]["orphan_files"] == 0 and s["storage"]["claims_made"] == 301
    assert os.listdir(tmp_path / "store") == []


def test_a_poisson_rate_is_split_over_the_processes_not_multiplied(endpoint_factory, tmp_path: Path) -> None:
    ep = endpoint_factory(latency=0.0)
    scn = scenario(ep.url, requests=None, duration=8.0, rate=50.0, concurrency=8, client_procs=4)
    res = run_stress(scn, tmp_path / "run")
    assert res.outcome == "clean", res.error
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "requests.jsonl").read_text().splitlines()]
    by_proc: dict[int, list[float]] = {}
    for r in recs:
        by_proc.setdefault(r["seq"] % 4, []).append(r["t_start"])
    assert len(by_proc) == 4
    # while all four were sending (each process starts when it has been spawned)
    t0, t1 = max(min(v) for v in by_proc.values()), min(max(v) for v in by_proc.values())
    assert t1 - t0 > 1.0
    rate = sum(1 for r in recs if t0 <= r["t_start"] <= t1) / (t1 - t0)
    assert 25 < rate < 80  # 4 x 50/s would be ~200/s


def test_counters_of_client_processes_merge_to_those_of_one() -> None:
    one, parts = RunStats(), [RunStats(), RunStats()]
    for i in range(40):
        rec = RequestRecord(seq=i, kind="hidden-states", t_start=0.0, latency=0.001 * (i + 1),
                            status="ok" if i % 5 else "timeout", attempts=1, error=None if i % 5 else "timeout",
                            prompt_tokens=10,
                            file={"ok": i % 7 != 0, "error": None if i % 7 else "bad-shape", "bytes": 100,
                                  "seconds": 0.002, "dtype": "BF16"})
        one.finish(rec, None)
        parts[i % 2].finish(RequestRecord(**{**rec.__dict__, "file": dict(rec.file)}), None)
    m = RunStats.merged(parts)
    assert (m.finished, m.ok, m.timeouts, m.files_ok, m.files_bad) == (one.finished, one.ok, one.timeouts,
                                                                       one.files_ok, one.files_bad)
    assert m.counts() == one.counts() and m.files() == one.files()
    assert m.latency.counts == one.latency.counts and m.latency.quantile(0.9) == one.latency.quantile(0.9)
    assert m.latency.min == one.latency.min and m.latency.max == one.latency.max


def test_histograms_with_other_bins_refuse_to_merge() -> None:
    with pytest.raises(ValueError):
        LogHistogram().merge(LogHistogram(bins_per_decade=10))


def test_shares_add_up_and_differ_by_one_at_most() -> None:
    for total in (1, 7, 256, 1001):
        for n in (1, 2, 3, 7):
            parts = [shards.share(total, n, i) for i in range(n)]
            assert sum(parts) == total and max(parts) - min(parts) <= 1


@pytest.mark.parametrize("load, words", [
    (dict(client_procs=4, concurrency=2), "more than --concurrency"),
    (dict(client_procs=2, workload="speculators"), "speculators"),
    (dict(client_procs=0), "--client-procs"),
])
def test_client_procs_that_cannot_be_split_are_refused_in_one_line(load: dict, words: str) -> None:
    with pytest.raises(UsageError) as e:
        scenario("http://127.0.0.1:9", **load).validate()
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_stall_seen_through_two_client_processes_stops_them_and_is_the_verdict(
        endpoint_factory, tmp_path: Path) -> None:
    """The server stops answering after 2 s: the detector in the run's process calls the stall from the
    processes' counters, the processes are aborted, and their requests in flight end as cancelled records."""
    from repro.scenario import DetectSettings

    ep = endpoint_factory(latency=0.01)
    sc = scenario(ep.url, requests=None, duration=600.0, request_timeout=600.0, client_procs=2)
    sc.detect = DetectSettings(window=2, startup_grace=0, poll_interval=0.5)
    threading.Timer(2.0, lambda: setattr(ep.args, "latency", 8.0)).start()
    run = tmp_path / "run"
    res = run_stress(sc, run)
    assert res.exit_code == 1 and res.outcome == "stall" and res.stall is not None
    recount = count_records(run / "requests.jsonl")
    assert recount["total"] == res.counts["total"] and recount.get("cancelled", 0) == res.counts["cancelled"] > 0
    assert res.load_s < 60


def test_bad_files_found_by_two_client_processes_are_announced_once_and_kept(endpoint_factory, tmp_path: Path) -> None:
    ep = endpoint_factory(bad_files="garbage")
    run = tmp_path / "run"
    res = run_stress(scenario(ep.url, requests=40, client_procs=2), run)
    assert res.exit_code == 4 and res.outcome == "files-bad"
    s = json.loads((run / "summary.json").read_text())
    assert s["files"]["bad"] == 40 and s["files"]["kept_for_inspection"]["files"] == 40
    assert len(os.listdir(run / "bad-files")) == 40
    bad_events = [json.loads(ln) for ln in (run / "events.jsonl").read_text().splitlines()
                  if json.loads(ln)["event"] == "file-bad"]
    assert [e["error"] for e in bad_events] == ["unreadable"]


def test_ctrl_c_of_a_sharded_run_keeps_every_record_and_leaves_no_client_process(
        endpoint_factory, tmp_path: Path) -> None:
    """SIGINT to the whole process group (a terminal's Ctrl-C): exit 130, every finished request recorded
    and counted, no client process left behind."""
    import psutil

    ep = endpoint_factory(latency=0.02)
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "repro", "stress", "--url", ep.url, "--concurrency", "8",
                          "--client-procs", "2", "--prompt-len", "16", "--vocab-size", "250", "--out", str(run),
                          "--duration", "600"], start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while ep.state.requests < 50 and time.monotonic() < deadline:
            time.sleep(0.1)
        kids = psutil.Process(p.pid).children(recursive=True)
        assert len(kids) >= 2
        os.killpg(p.pid, signal.SIGINT)
        assert p.wait(60) == 130
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    s = json.loads((run / "summary.json").read_text())
    recount = count_records(run / "requests.jsonl")
    assert s["outcome"] == "interrupted" and recount["total"] == s["requests"]["total"] >= 50
    # the client processes and multiprocessing's resource tracker end with the run (the tracker a moment after it)
    _, alive = psutil.wait_procs(kids, timeout=10)
    assert not alive
