"""The real speculators client against the real CPU vLLM, with `repro watch --url` watching, and the FP8 format.

One server of the test's own (request logging on, so that aborts show in its log; repro's CPU FP8 connector,
which writes hs-connectors' FP8 format). First `repro stress --connector cpu-fp8 --workload speculators`
checks that the files are FP8 with hs-connectors' per-token scales and that speculators' lock handling works
on vLLM's real lock files (none left behind). Then the real `speculators generate-offline-data` (its own CLI, a
dataset the test writes, no hub) drives the load while `repro watch --url` watches:

1. a temporary scheduler stall longer than the client's timeout: speculators times out, retries after 2 s,
   and the requests it gave up on that the engine had already taken leave files no one will take (orphans);
2. a permanent scheduler stall: speculators' retries time out again and it gives up after
   --max-consecutive-errors failed samples; watch detects the stall (its probe goes unanswered), captures.

Contract: the bundle names the stall and its frame, and records what the client saw from the server's side:
the aborted requests (its timeouts; a retry is a new request) and the files in the store whose requests the
log shows aborted; speculators exits 1 having given up.
"""

from __future__ import annotations

import json
import random
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from repro.load.runner import run_stress
from repro.scenario import DetectSettings, LoadSettings, Scenario, ServerSettings
from tests.helpers_speculators import require_speculators, run_speculators, write_dataset
from tests.integration.conftest import require_vllm, start_server
from repro.watch.events import read_events


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode} first")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)


def events(run: Path) -> list[dict]:
    p = run / "events.jsonl"
    return read_events(p) if p.exists() else []


def injected(run_dir: Path) -> list[dict]:
    p = run_dir / "injected.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def test_watch_captures_a_stall_while_real_speculators_drives_the_load(tmp_path: Path) -> None:
    require_vllm()
    require_speculators()
    srv_dir, ctl = tmp_path / "server", tmp_path / "inject.control"
    store = Path(f"/dev/shm/repro-test-spec-{tmp_path.name}")
    server = start_server(srv_dir, storage=str(store), connector="cpu-fp8", inject_control=str(ctl),
                          extra_args=["--enable-log-requests"])
    spec = watch = None
    try:
        # The FP8 format on a real engine, fetched the way speculators does (LOCK_EX, lock removed): every file
        # F8_E4M3 with per-token amax scales, checked as such.
        scn = Scenario(server=ServerSettings(connector="cpu-fp8"), url=server.url, storage_path=str(store),
                       load=LoadSettings(workload="speculators", concurrency=4, requests=24, prompt_len=(16, 96)),
                       on_stall="exit", detect=DetectSettings(window=120))
        res = run_stress(scn, tmp_path / "fp8-run")
        assert res.exit_code == 0, res.summary.get("error")
        assert res.files["verified"] == 24 and res.files["bad"] == 0 and res.files["dtypes"] == {"F8_E4M3": 24}
        assert not any(store.iterdir()), sorted(p.name for p in store.iterdir())  # files and locks taken

        rng = random.Random(0)
        data = write_dataset(tmp_path / "data", [[rng.randrange(4, 500) for _ in range(rng.randint(16, 48))]
                                                 for _ in range(3000)])
        out = tmp_path / "hs-out"
        run = tmp_path / "watch"
        watch = subprocess.Popen(
            [sys.executable, "-m", "repro", "watch", "--url", server.url, "--pid", str(server.pid),
             "--log-file", str(server.log_path), "--storage", str(store), "--storage-grace", "1s",
             "--restart-cmd", f"printf release > {shlex.quote(str(ctl))}", "--max-restarts", "0",
             "--poll-interval", "0.5", "--window", "12", "--startup-grace", "0",
             "--probe", "--probe-interval", "1", "--probe-timeout", "3",
             "--capture-samples", "1", "--no-collect-env", "--capture-budget", "90", "--out", str(run)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: any(e["event"] == "attached" for e in events(run)), 60, "watch attaching", watch)
        spec_log = tmp_path / "speculators.log"
        spec = run_speculators(server.url + "/v1", data, out, "--concurrency", "8", "--request-timeout", "3",
                               "--max-retries", "1", popen=True, log=spec_log)
        wait_for(lambda: out.is_dir() and len(list(out.iterdir())) >= 40, 180, "speculators moving files", spec)

        ctl.write_text("stall-for=6")  # longer than the client's 3 s: timeouts, aborts, retries, late files
        wait_for(lambda: any(e["event"] == "slow-end" for e in injected(srv_dir)), 60, "the temporary stall")
        moved = len(list(out.iterdir()))
        wait_for(lambda: len(list(out.iterdir())) >= moved + 40, 60, "speculators going on after it", spec)

        ctl.write_text("stall-after=0")  # for good: speculators gives up, watch captures
        code = watch.wait(timeout=240)
        spec.wait(timeout=120)
        _, werr = watch.communicate(timeout=30)
        spec_out = spec_log.read_text(errors="replace")
    finally:
        ctl.write_text("release")
        for p in (spec, watch):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        server.stop()
        shutil.rmtree(store, ignore_errors=True)

    assert code == 1, werr[-3000:]  # --max-restarts 0: the first stall is captured and the watch gives up
    assert spec.returncode == 1 and "consecutive samples errored out" in spec_out, spec_out[-3000:]
    assert "Request aborted (attempt 1/2)" in spec_out and "Retrying in 2s" in spec_out
    ev = events(run)
    detect = next(e for e in ev if e["event"] == "detect")
    cap = next(e for e in ev if e["event"] == "capture")
    assert detect["class"] == "engine-stall" and cap["status"] == "done", (detect, cap)
    bundle = Path(cap["dir"])
    stacks = "".join(p.read_text(errors="replace") for p in (bundle / "stacks").rglob("*") if p.is_file())
    assert "repro_injected_scheduler_stall" in stacks
    clients = json.loads((bundle / "context" / "clients.json").read_text())
    assert clients["requests"]["received"] >= 100 and clients["requests"]["aborted"] >= 8, clients
    assert clients["store"]["of_aborted_requests"] >= 1, clients  # written after its client had given up
    storage = json.loads((bundle / "context" / "storage.json").read_text())
    assert storage["files_waiting"] >= clients["store"]["of_aborted_requests"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["clients"]["aborted"] == clients["requests"]["aborted"]
