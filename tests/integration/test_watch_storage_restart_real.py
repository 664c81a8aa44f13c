"""Issue 8 on a REAL vLLM: `repro watch --serve` does not restart a server that died of a full store until space is
back.

One server start (the restart is stopped as soon as it is launched, so the test pays for one start only): a 4 MB
tmpfs is the store; a filler file leaves ~40 kB; a few hidden-state requests make the engine die of ENOSPC in the
write. watch captures, names the storage cause, and waits (`storage-wait`, free vs needed bytes) instead of
restarting into the full store; when the test deletes the filler, watch logs `restart` (storage recovered) and only
then `start`. The bundle of the death renders as a storage report (`repro issue`), with a timeline plot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from repro.analyze.issue import find_template, render_reports
from repro.server.launcher import port_free
from tests.integration.conftest import complete, require_vllm
from tests.helpers_watch_real import FAST, end_watch, events, wait_event


def _port() -> int:
    for p in range(8700, 8800):
        if port_free("127.0.0.1", p):
            return p
    pytest.skip("no free port in 8700-8799")


def test_a_storage_death_waits_for_space_and_restarts_only_after_it_is_back(tmp_path: Path) -> None:
    require_vllm()
    store = Path(f"/dev/shm/repro-watch-fill-{os.getpid()}")
    store.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(store)], capture_output=True).returncode:
        store.rmdir()
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): no filesystem to fill safely")
    port = _port()
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "repro", "watch", "--serve", "--port", str(port), "--storage", str(store),
           "--out", str(out), *FAST, "--capture-samples", "1", "--storage-wait-max", "3m", "--restart-min-free", "25%"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    filler = store / "filler.bin"
    stop = threading.Event()
    try:
        wait_event(out, proc, "healthy", timeout=300)
        free = os.statvfs(store).f_bavail * os.statvfs(store).f_frsize
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, free - 40_000))

        def load() -> None:  # hidden-state requests until the engine dies of the full store
            while not stop.is_set():
                try:
                    complete(f"http://127.0.0.1:{port}", "repro-tiny", list(range(1, 200)), timeout=20)
                except Exception:  # noqa: BLE001
                    time.sleep(0.2)

        threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        detect = wait_event(out, proc, "detect", timeout=120)
        waiting = wait_event(out, proc, "storage-wait", timeout=120)
        stop.set()
        time.sleep(3)  # a poll or two of waiting: no start while the store is full
        assert [e["event"] for e in events(out)].count("start") == 1, "restarted into a full store"
        filler.unlink()  # the operator frees space
        restart = wait_event(out, proc, "restart", timeout=60)
        started = wait_event(out, proc, "start", count=2, timeout=60)
    finally:
        stop.set()
        rc, err = end_watch(proc)
        subprocess.run(["umount", str(store)], capture_output=True)
        shutil.rmtree(store, ignore_errors=True)
    assert detect["class"] == "server-dead", detect
    assert detect["detection"]["evidence"]["storage_cause"]["kind"] == "no-space", detect["detection"]["evidence"]
    assert waiting["status"] == "waiting", waiting
    # at least --restart-min-free 25%; more when the fill rate watch measured asks for 10 min of room (at most half)
    assert int(0.25 * waiting["total_bytes"]) <= waiting["need_bytes"] <= waiting["total_bytes"] // 2, waiting
    assert waiting["free_bytes"] < waiting["need_bytes"], waiting
    assert "free space in the store" in waiting["message"]
    assert restart["reason"] == "storage recovered" and restart["free_bytes"] >= restart["need_bytes"]
    assert restart["t"] <= started["t"]
    ev = [e["event"] for e in events(out)]
    i = ev.index("detect")
    second_start = [j for j, k in enumerate(ev) if k == "start"][1]
    assert ev.index("capture", i) < ev.index("storage-wait", i) < ev.index("restart", i) < second_start, ev
    # the bundle of the death is a storage report, with the store's census and its plot
    cap = next(e for e in events(out) if e["event"] == "capture")
    assert cap["status"] == "done", cap
    bundle = Path(cap["dir"])
    assert (bundle / "timeline.png").is_file()
    md = render_reports(bundle, find_template())
    assert list(md) == ["storage"]
    assert md["storage"].startswith("# [Bug]: EngineCore dies when the hidden-state store fails (no-space in the "
                                    "hidden-state write)"), md["storage"][:300]
    assert "No space left on device" in md["storage"] and "repro watch sends no load" in md["storage"]
    print(f"died {detect['t']:.1f}, waiting with {waiting['free_bytes']} B free of {waiting['need_bytes']} needed, "
          f"restart {restart['t'] - detect['t']:.1f} s after the death; watch exit {rc}")
