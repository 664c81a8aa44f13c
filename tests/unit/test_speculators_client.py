"""`--workload speculators` sends what the real speculators 0.9 client sends, retries when it does and gives up
when it does.

Both run at the same time against their own recording endpoint with the same plan: the real
`speculators generate-offline-data` (installed beside the kit; a preprocessed dataset the test writes, no hub)
and `repro stress --workload speculators --prompts <that dataset>`. Contract, per sample: the same requests
(path, JSON body key for key and in the same key order, Content-Type and Authorization), the same retry timing
(gaps between attempts: 2 s after a failed attempt, request timeout + 4 s after a timed-out second attempt,
also for HTTP 400), the same file handling (a lock released late is waited for and removed, a lock held for
good fails the sample after 10 s and leaves file and lock, an answer with other prompt ids fails at once and
is not retried), and the same give-up after --max-consecutive-errors failed samples.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers_speculators import Recorder, attempt_gaps, dump, require_speculators, run_speculators, write_dataset

REPRO = [sys.executable, "-m", "repro"]
PLAN = {100: ["ok"], 101: ["500", "hang", "ok"], 102: ["lock"], 103: ["lock-held"], 104: ["bad-ids"],
        105: ["400", "ok"], 106: ["ok"]}
NOMINAL_GAPS = {101: [2.0, 1.5 + 4.0], 105: [2.0]}  # 2 ** attempt after attempt 1, 2; attempt 2 times out at 1.5 s
SLACK = 1.5  # a loaded 2-core machine may wake a sleeper this late; never early


def samples(n: int) -> list[list[int]]:
    return [[100 + k, *range(5, 12 + k)] for k in range(n)]


def repro_stress(url: str, dataset: Path, run: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [*REPRO, "stress", "--url", url, "--workload", "speculators", "--prompts", str(dataset),
           "--window", "600", "--startup-grace", "600", "--out", str(run), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def posts(rec: Recorder, keys: set[int]) -> dict[int, list]:
    return {k: rec.requests_for(k) for k in sorted(keys)}


@pytest.fixture
def pair(tmp_path: Path):
    made: list[Recorder] = []

    def make(plan: dict[int, list[str]], default: str = "ok") -> tuple[Recorder, Recorder]:
        real = Recorder(tmp_path / "store-real", plan, default=default)
        ours = Recorder(tmp_path / "store-repro", plan, default=default)
        made.extend([real, ours])
        return real, ours

    yield make
    for r in made:
        r.close()


def test_requests_retries_and_file_handling_match_the_real_client(pair, tmp_path: Path) -> None:
    require_speculators()
    real, ours = pair(PLAN)
    data = write_dataset(tmp_path / "data", samples(7))
    p_real = run_speculators(real.url + "/v1", data, tmp_path / "out-real", "--concurrency", "4",
                             "--request-timeout", "1.5", "--max-retries", "2", popen=True)
    p_ours = repro_stress(ours.url, data, tmp_path / "run", "--requests", "7", "--concurrency", "4",
                          "--request-timeout", "1.5", "--retries", "2", "--consume", f"move:{tmp_path / 'out-repro'}")
    out_real, _ = p_real.communicate(timeout=600)
    out_ours, _ = p_ours.communicate(timeout=600)
    assert p_real.returncode == 0, out_real[-3000:]
    # speculators skips the sample whose lock stays held past 10 s and exits 0; repro says that its file was not
    # verified: exit 4, the file counted as unverifiable
    assert p_ours.returncode == 4, out_ours[-3000:]
    files = json.loads((tmp_path / "run" / "summary.json").read_text())["files"]
    assert files["bad"] == files["unverifiable"] == 1 and files["errors"] == {"lock-timeout": 1}, files

    a, b = posts(real, set(PLAN)), posts(ours, set(PLAN))
    for key in PLAN:
        ra, rb = a[key], b[key]
        assert [x.body for x in ra] == [x.body for x in rb], f"sample {key}: {dump(ra)} vs {dump(rb)}"
        assert [x.keys for x in ra] == [x.keys for x in rb] and [x.path for x in ra] == [x.path for x in rb]
        for x, y in zip(ra, rb):
            for h in ("content-type", "authorization"):
                assert x.headers.get(h) == y.headers.get(h), (key, h, x.headers, y.headers)
        assert len(ra) == {101: 3, 105: 2}.get(key, 1), f"sample {key}: {len(ra)} attempts"
    for key, nominal in NOMINAL_GAPS.items():
        for who, gaps in (("speculators", attempt_gaps(a[key])), ("repro", attempt_gaps(b[key]))):
            assert all(n - 0.05 <= g <= n + SLACK for g, n in zip(gaps, nominal)), (key, who, gaps, nominal)
    assert a[100][0].body == {"model": "rec-model", "prompt": samples(7)[0], "max_tokens": 1, "return_token_ids": True}

    # Files: moved away and lock removed for every good sample; the held lock and the bad answer leave theirs.
    for rec in (real, ours):
        left = sorted(p.name for p in rec.store.iterdir())
        assert left == ["cmpl-103-0.safetensors", "cmpl-103-0.safetensors.lock",
                        "cmpl-104-0.safetensors", "cmpl-104-0.safetensors.lock"], (rec.store, left)
    assert sorted(p.name for p in (tmp_path / "out-real").iterdir()) == [f"hs_{i}.safetensors" for i in (0, 1, 2, 5, 6)]
    assert len(list((tmp_path / "out-repro").iterdir())) == 5
    recs = {json.loads(x)["seq"]: json.loads(x) for x in (tmp_path / "run" / "requests.jsonl").read_text().splitlines()}
    assert recs[4]["error"] == "invalid-response" and recs[4]["attempts"] == 1
    assert recs[3]["file"]["error"] == "lock-timeout" and recs[3]["file"]["lock_wait"] >= 10.0
    assert recs[1]["attempts"] == 3 and recs[5]["attempts"] == 2
    assert "Skipped 2 samples due to errors" in out_real


def test_gives_up_after_max_consecutive_errors_like_the_real_client(pair, tmp_path: Path) -> None:
    require_speculators()
    real, ours = pair({}, default="503")
    data = write_dataset(tmp_path / "data", samples(6))
    common = ["--concurrency", "1", "--max-consecutive-errors", "2"]
    r = run_speculators(real.url + "/v1", data, tmp_path / "out", *common, "--max-retries", "0")
    p = repro_stress(ours.url, data, tmp_path / "run", *common, "--retries", "0", "--requests", "6")
    out_ours, _ = p.communicate(timeout=300)
    assert r.returncode == 1 and "2 consecutive samples errored out" in r.stdout + r.stderr, r.stderr[-2000:]
    assert p.returncode == 3, out_ours[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["outcome"] == "client-gave-up" and summary["client"]["gave_up"]["consecutive_failed_samples"] == 2
    sent_real = [x.body for x in real.arrivals if x.method == "POST"]
    sent_ours = [x.body for x in ours.arrivals if x.method == "POST" and x.body["prompt"][0] >= 100]
    # speculators' second worker may have sent one more before the cancellation reached it; never more
    assert 2 <= len(sent_real) <= 3 and 2 <= len(sent_ours) <= 3, (dump(real.arrivals), dump(ours.arrivals))
    assert sent_real[:2] == sent_ours[:2]
