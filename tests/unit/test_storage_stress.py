"""Orphan accounting inside `repro stress` (issue 8, build 1), against benchmarks/fast_endpoint.py.

Contract: every path a response names is claimed before its file is checked; files the
client consumed are forgotten; a file in the store that no response named is an orphan and
is counted exactly in summary.json; timeline.csv carries the store's figures; a storage path
that does not exist or cannot be read is one line and exit 2.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repro.errors import UsageError
from repro.load.runner import run_stress
from repro.scenario import DetectSettings, LoadSettings, Scenario
from tests.helpers_endpoint import endpoint_factory  # noqa: F401  (fixture)
from tests.helpers_cli import one_line_error


def scenario(url: str, store: Path, **kw: object) -> Scenario:
    load = dict(concurrency=8, requests=300, prompt_len=(16, 64), vocab_size=250, request_timeout=30.0)
    return Scenario(load=LoadSettings(**load), detect=DetectSettings(window=60, startup_grace=0),  # type: ignore[arg-type]
                    url=url, on_stall="exit", storage_path=str(store), **kw)  # type: ignore[arg-type]


def leak(store: Path, n: int, age: float = 120.0) -> set[str]:
    names = set()
    for i in range(n):
        p = store / f"leaked-{i}.safetensors"
        p.write_bytes(b"x" * (100 + i))
        old = time.time() - age
        os.utime(p, (old, old))
        names.add(p.name)
    return names


def test_unclaimed_files_are_orphans_and_consumed_claims_are_not(endpoint_factory, tmp_path: Path) -> None:  # noqa: F811
    ep = endpoint_factory(latency=0.002)
    store = tmp_path / "store"
    leaked = leak(store, 7)
    run = tmp_path / "run"
    res = run_stress(scenario(ep.url, store, orphan_grace=1.0), run)
    assert res.exit_code == 0
    st = json.loads((run / "summary.json").read_text())["storage"]
    assert st["claims_made"] == 300  # every response's path was claimed
    assert st["orphan_files"] == 7 and st["orphan_bytes"] == sum(100 + i for i in range(7))
    assert st["files"] == 7 and st["claimed_files"] == 0  # the 300 consumed files are gone and forgotten
    assert {o["name"] for o in st["orphan_sample"]} == leaked
    assert st["scans_total"] >= 2 and st["scan_seconds_total"] >= 0
    assert st["fs_free_bytes"] > 0 and st["fs_total_inodes"] >= 0
    with open(run / "timeline.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and rows[0]["orphan_files"] != "" and int(rows[-1]["store_bytes"]) >= 0


def test_kept_files_stay_claimed_never_orphans(endpoint_factory, tmp_path: Path) -> None:  # noqa: F811
    """--consume keep: the files stay in the store, but every one was named by a response."""
    ep = endpoint_factory(latency=0.002)
    store = tmp_path / "store"
    run = tmp_path / "run"
    scn = scenario(ep.url, store, orphan_grace=0.0)
    scn.load.consume, scn.load.requests = "keep", 50
    run_stress(scn, run)
    st = json.loads((run / "summary.json").read_text())["storage"]
    assert st["files"] == 50 and st["claimed_files"] == 50 and st["orphan_files"] == 0


def test_storage_path_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such directory"):
        run_stress(scenario("http://127.0.0.1:9", tmp_path / "nope"), tmp_path / "run")


def test_cli_missing_storage_path_is_one_line_and_exit_2(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "repro", "stress", "--url", "http://127.0.0.1:9",
                        "--storage-path", str(tmp_path / "nope"), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no such directory" in one_line_error(r, help_ok=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_cli_unreadable_storage_path_is_one_line_and_exit_2(tmp_path: Path) -> None:
    d = tmp_path / "locked"
    d.mkdir(mode=0o000)
    try:
        r = subprocess.run([sys.executable, "-m", "repro", "stress", "--url", "http://127.0.0.1:9",
                            "--storage-path", str(d)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "not readable" in one_line_error(r, help_ok=True)
    finally:
        d.chmod(0o700)


def test_cli_bad_storage_horizon_is_exit_2(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "repro", "stress", "--url", "http://127.0.0.1:9",
                        "--storage-horizon", "soon"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--storage-horizon" in one_line_error(r, help_ok=True)


ENOSPC_TRACE = """(EngineCore_DP0 pid=9) ERROR 11-28 17:20:01 [core.py:933] EngineCore encountered a fatal error.
(EngineCore_DP0 pid=9) ERROR 11-28 17:20:01 [core.py:933] Traceback (most recent call last):
(EngineCore_DP0 pid=9) ERROR 11-28 17:20:01 [core.py:933]   File "example_hidden_states_connector.py", line 210, in save_kv_layer
(EngineCore_DP0 pid=9) ERROR 11-28 17:20:01 [core.py:933]     safetensors.torch.save_file(tensors, filename)
(EngineCore_DP0 pid=9) ERROR 11-28 17:20:01 [core.py:933] safetensors_rust.SafetensorError: Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })
(APIServer pid=8) ERROR 11-28 17:20:01 [async_llm.py:480] vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.
"""
OTHER_DEATH = """(EngineCore_DP0 pid=9) ERROR 11-28 17:20:01 [core.py:933] EngineCore encountered a fatal error.
(EngineCore_DP0 pid=9) ERROR 11-28 17:20:01 [core.py:933] RuntimeError: CUDA error: an illegal memory access was encountered
(APIServer pid=8) ERROR 11-28 17:20:01 [async_llm.py:480] vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.
"""


def _die_later(log: Path, text: str, after: float) -> None:
    import threading

    def write() -> None:
        time.sleep(after)
        with open(log, "a") as f:
            f.write(text)

    threading.Thread(target=write, daemon=True).start()


@pytest.mark.parametrize("trace, kind", [(ENOSPC_TRACE, "no-space"), (OTHER_DEATH, None)])
def test_server_dead_names_the_storage_cause_only_when_the_log_shows_one(
        endpoint_factory, tmp_path: Path, trace: str, kind: str | None) -> None:  # noqa: F811
    ep = endpoint_factory(latency=0.002)
    store = tmp_path / "store"
    log = tmp_path / "server.log"
    log.write_text("(APIServer pid=8) INFO starting\n")
    scn = scenario(ep.url, store, log_file=str(log))
    scn.load.requests, scn.load.duration = None, 30.0
    _die_later(log, trace, 2.0)
    run = tmp_path / "run"
    res = run_stress(scn, run)
    s = json.loads((run / "summary.json").read_text())
    assert res.exit_code == 1 and s["stall"]["class"] == "server-dead"
    if kind is None:
        assert s["storage_cause"] is None and "storage_cause" not in s["stall"]["evidence"]
        return
    assert s["storage_cause"]["kind"] == kind and s["storage_cause"]["in_hidden_state_write"] == "yes"
    assert s["stall"]["evidence"]["storage_cause"]["kind"] == kind
    assert any("storage: no-space in the hidden-state write" in r for r in s["stall"]["evidence"]["reasons"])


def test_bundle_storage_section_carries_the_runs_orphan_census(tmp_path: Path) -> None:
    """What only the client knows (which files no response named) goes into context/storage.json beside the walk."""
    from repro.bundle.writer import BundleWriter
    from repro.secrets.redact import Redactor
    from repro.capture.request import CaptureRequest
    from repro.capture.run import _write_storage
    from repro.storage.alerts import StorageWatch

    store = tmp_path / "store"
    store.mkdir()
    leaked = leak(store, 3)
    w = StorageWatch.open(store, grace=1.0)
    w.poll(force=True)

    from repro.load.store import StoreAccounting
    acc = StoreAccounting(w, lambda *a, **k: None, lambda msg: None, lambda t: t).accounting()
    bw = BundleWriter(tmp_path / "bundle", Redactor())
    _write_storage(bw, CaptureRequest(out_dir=tmp_path / "bundle", storage_path=str(store), storage_accounting=acc))
    info = json.loads((tmp_path / "bundle" / "context" / "storage.json").read_text())
    assert info["files_waiting"] == 3
    a = info["accounting"]
    assert a["orphan_files"] == 3 and a["orphan_bytes"] == 100 + 101 + 102
    assert {o["name"] for o in a["orphan_sample"]} == leaked and a["oldest_orphan_age_s"] >= 119
    assert a["growth_curve"] and a["growth_curve"][-1]["orphan_files"] == 3
    assert "fs_free_bytes" in a and "projected_seconds_to_full" in a


def test_issue_title_names_a_storage_death_not_a_hang(tmp_path: Path) -> None:
    """A bundle whose detection carries storage_cause (ENOSPC in the hidden-state write) is titled as such."""
    import shutil as sh

    from repro.analyze.issue import find_template, render_issue

    src = Path(__file__).resolve().parents[2] / "traces" / "write-stall"
    b = tmp_path / "bundle"
    sh.copytree(src, b)
    det_p = b / "context" / "detection.json"
    det = json.loads(det_p.read_text()) if det_p.exists() else {}
    det = det or {}
    det["class"] = "server-dead"
    det.setdefault("evidence", {})["storage_cause"] = {"kind": "no-space", "line": "No space left on device (os error 28)",
                                                      "in_hidden_state_write": "yes"}
    det_p.write_text(json.dumps(det))
    first = render_issue(b, find_template()).splitlines()[0]
    assert first == "# [Bug]: EngineCore dies when the hidden-state store fails (no-space in the hidden-state write)"
    plain = render_issue(src, find_template()).splitlines()[0]
    assert "store fails" not in plain
