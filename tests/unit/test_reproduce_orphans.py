"""traces/orphan-leak/reproduce_orphans.py, the standalone reproducer for vLLM's orphan leak.

Contract: it runs on the standard library alone (python -I: no repro, no site packages); against a
server that writes a file for every request it scheduled, also for the ones the client gave up on,
it counts the files and .lock files no response named and exits 1; when every request completes it
exits 0; files present before it started are never counted; a missing storage directory exits 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers_endpoint import endpoint_factory  # noqa: F401  (fixture)

SCRIPT = Path(__file__).resolve().parents[2] / "traces" / "orphan-leak" / "reproduce_orphans.py"


def run(url: str, storage: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", str(SCRIPT), "--url", url, "--storage", str(storage), *extra],
                          capture_output=True, text=True, timeout=120)


def test_aborted_requests_leave_orphans_and_exit_1(endpoint_factory, tmp_path: Path) -> None:  # noqa: F811
    ep = endpoint_factory(latency=2.0, write_first=True)
    store = tmp_path / "store"
    (store / "old.safetensors").write_bytes(b"x")  # there before: not this run's
    r = run(ep.url, store, "-n", "12", "--concurrency", "4", "--timeout", "0.3", "--prompt-len", "16",
            "--wait", "5", "--json", str(tmp_path / "r.json"))
    assert r.returncode == 1, r.stdout + r.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    assert (res["timed_out"], res["completed"], res["orphan_files"], res["orphan_lock_files"]) == (12, 0, 12, 12)
    assert "LEAK" in r.stdout and "12 .safetensors files" in r.stdout


def test_completed_requests_leave_no_orphan_and_exit_0(endpoint_factory, tmp_path: Path) -> None:  # noqa: F811
    ep = endpoint_factory(latency=0.0)
    store = tmp_path / "store"
    r = run(ep.url, store, "-n", "20", "--concurrency", "4", "--timeout", "10", "--prompt-len", "16", "--wait", "4",
            "--remove")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no orphan left" in r.stdout and list(store.iterdir()) == []


def test_a_missing_storage_directory_exits_2(tmp_path: Path) -> None:
    r = run("http://127.0.0.1:9", tmp_path / "nope")
    assert r.returncode == 2 and "no such directory" in r.stderr
