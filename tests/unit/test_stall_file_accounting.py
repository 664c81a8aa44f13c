"""Files a stalled engine never wrote are evidence of the stall, not bad files.

Contract: a hidden-state file check that ended ``file-missing`` (or ``lock-timeout``: the writer
never finished) at or after the moment the stall began is counted ``not written: engine
stalled`` (summary ``files.not_written_engine_stalled``), never in ``files.bad``; one that ended
before the stall began stays bad, and so does any other failure (bad tokens, unreadable) at any
time. The stall is declared a window after it began: checks that ended in between move over when
it is. requests.jsonl recounted with the stall's ``since_s`` gives the same figures.
"""

from __future__ import annotations

import json
from pathlib import Path

from repro.load.records import RequestRecord, RunStats, count_records

DATA = Path(__file__).parent / "data" / "report-runs" / "stress-stall"


def rec(seq: int, t_end: float, error: str | None) -> RequestRecord:
    f = {"ok": error is None, "path": f"/dev/shm/hs/{seq}.safetensors"}
    if error is not None:
        f.update(error=error, t_end=t_end)
    return RequestRecord(seq=seq, kind="hidden-states", t_start=t_end - 0.5, latency=0.1, status="ok", attempts=1,
                         file=f)


def test_missing_files_after_the_stall_began_are_not_written_not_bad(tmp_path: Path) -> None:
    st = RunStats()
    out = open(tmp_path / "requests.jsonl", "w")
    st.finish(rec(1, 10.0, None), out)
    st.finish(rec(2, 20.0, "file-missing"), out)  # before the stall began (at 50): the engine was working: bad
    st.finish(rec(3, 55.0, "file-missing"), out)  # after it began, before it was declared (at 70)
    st.finish(rec(4, 56.0, "bad-tokens"), out)  # a wrong file is wrong whenever it is checked
    assert (st.files_bad, st.files_not_written) == (3, 0)  # nothing is known about a stall yet
    st.stall_began(50.0)
    assert (st.files_ok, st.files_bad, st.files_not_written) == (1, 2, 1)
    st.finish(rec(5, 71.0, "file-missing"), out)  # abandoned when the stall was declared
    st.finish(rec(6, 71.0, "lock-timeout"), out)  # the stalled writer held its lock
    out.close()
    files = st.files()
    assert files["verified"] == 1 and files["bad"] == 2
    assert files["errors"] == {"file-missing": 1, "bad-tokens": 1}
    assert files["not_written_engine_stalled"] == 3
    assert files["not_written_errors"] == {"file-missing": 2, "lock-timeout": 1}
    recount = count_records(tmp_path / "requests.jsonl", stall_since=50.0)
    assert (recount["files_ok"], recount["files_bad"], recount["files_not_written"]) == (1, 2, 3)
    assert count_records(tmp_path / "requests.jsonl")["files_bad"] == 5  # without the stall's time: all bad
    late = [json.loads(x) for x in (tmp_path / "requests.jsonl").read_text().splitlines()][-2:]
    assert all(r["file"]["not_written"] == "engine stalled" for r in late)


def test_recorded_stall_run_counts_the_files_the_stalled_engine_never_wrote_apart() -> None:
    """GIVEN the requests.jsonl of a real stall run (vLLM on CPU, the scheduler stalled for good under load at
    concurrency 16: the last responses came back, then the engine never stepped again to write their files)
    WHEN its records are replayed through RunStats in the order they finished, with the stall declared where the
    run declared it (before the cancellations that ended it) THEN before the declaration those files count as bad,
    after it they are `not written: engine stalled`, and the figures equal the run's summary.json and a recount."""
    summary = json.loads((DATA / "summary.json").read_text())
    since = summary["stall"]["since_s"]
    lines = (DATA / "requests.jsonl").read_text().splitlines()
    st = RunStats()
    bad_before = None
    for line in lines:
        d = json.loads(line)
        if d.get("file"):
            d["file"].pop("not_written", None)
        r = RequestRecord(**{"latency": None, **d})  # to_json leaves out the None fields
        declared = st.stall_since is not None
        if not declared and (r.status == "cancelled" or (r.file or {}).get("t_end", 0) >= summary["stall"]["detected_s"]):
            bad_before = st.files_bad
            st.stall_began(since)
        st.finish(r, None)
    if st.stall_since is None:
        bad_before = st.files_bad
        st.stall_began(since)
    files = st.files()
    assert bad_before and bad_before >= 1  # what the live display said while the stall was only suspected
    assert files["bad"] == 0 and files["not_written_engine_stalled"] >= bad_before
    for k in ("verified", "bad", "errors", "not_written_engine_stalled", "not_written_errors"):
        assert files[k] == summary["files"][k], k
    recount = count_records(DATA / "requests.jsonl", stall_since=since)
    assert recount.get("files_bad", 0) == 0 and recount["files_not_written"] == files["not_written_engine_stalled"]


def test_a_check_the_stopping_run_never_ran_is_not_checked_neither_verified_nor_bad(tmp_path: Path) -> None:
    """GIVEN answers whose file checks were still queued when the run stopped (Ctrl-C) THEN they count as
    `not_checked`, never as bad files, in the summary's counts, in requests.jsonl recounted and in the
    final line."""
    from repro.load.display import final_line

    st = RunStats()
    path = tmp_path / "requests.jsonl"
    with open(path, "w") as out:
        st.finish(rec(1, 10.0, None), out)
        st.finish(rec(2, 11.0, "cancelled"), out)
        st.finish(rec(3, 11.0, "cancelled"), out)
    files = st.files()
    assert (files["verified"], files["bad"], files["not_checked"]) == (1, 0, 2)
    assert count_records(path)["files_not_checked"] == 2 and "files_bad" not in count_records(path)
    line = final_line({"outcome": "interrupted", "requests": {"ok": 3, "total": 3}, "files": files}, run_dir=tmp_path)
    assert "1 verified, 0 bad, 2 not checked: the run stopped first" in line
