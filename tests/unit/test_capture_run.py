"""capture(CaptureRequest) -> Bundle, against real processes hung at known places (no vLLM needed).

The target is tests/unit/capture_targets/fake_vllm_server.py: a launcher whose argv, environment and log
carry planted secrets, with a child titled VLLM::EngineCore hung in a named function. Capture reads it
exactly as it reads a real server: /proc/PID/{cmdline,environ,task}, py-spy, GET /metrics, the log file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Iterator

import pytest

from repro.bundle.manifest import sha256_file
from repro.bundle.reader import unpack
from repro.capture.pyspy import find_pyspy
from repro.capture.request import Bundle, CaptureRequest
from repro.capture.run import capture
from repro.errors import UsageError
from repro.scenario import CaptureSettings, Scenario, ServerSettings
from tests.unit.capture_targets.harness import FORBIDDEN, FakeServer, start_fake

pytestmark = pytest.mark.skipif(find_pyspy() is None, reason="py-spy not installed")

FAST = dict(samples=3, interval=0.5, collect_env=False)


@pytest.fixture
def scratch() -> Iterator[Path]:
    d = Path(f"/dev/shm/repro-capture-test-{os.getpid()}-{os.urandom(3).hex()}")
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def hung(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeServer, Bundle]]:
    """One fake server hung in hang_in_scheduler, with planted secrets, captured once for several tests."""
    tmp = tmp_path_factory.mktemp("hung")
    srv = start_fake(tmp, "scheduler")
    try:
        req = CaptureRequest(out_dir=tmp / "bundle-001", settings=CaptureSettings(**FAST), root_pid=srv.pid,
                             url=srv.url, log_path=srv.log, storage_path=str(tmp), api_key="zz-the-api-key-zz",
                             scenario=Scenario(server=ServerSettings(port=srv.port)),
                             events=[{"t": 1.0, "event": "stall", "wall": "2026-11-28T17:00:00Z"}],
                             detection={"class": "engine-stuck", "since_s": 42.0,
                                        "since_wall": "2026-11-28T17:00:00.000Z"})
        yield srv, capture(req)
    finally:
        srv.stop()


def test_engine_core_is_blocked_in_the_hang_function(hung: tuple[FakeServer, Bundle]) -> None:
    """GIVEN a process hung in Event.wait under hang_in_scheduler WHEN captured THEN EngineCore is blocked there."""
    _, b = hung
    assert b.verdict is not None
    assert b.verdict["stuck_process"] == "EngineCore"
    assert b.verdict["verdict"] == "blocked"
    assert b.verdict["stuck_frame"].startswith("hang_in_scheduler (")
    assert len(b.verdict["signature"]) == 12


def test_manifest_records_every_collector_with_a_matching_sha256(hung: tuple[FakeServer, Bundle]) -> None:
    _, b = hung
    m = json.loads((b.dir / "manifest.json").read_text())
    assert (m["schema"], m["version"]) == ("repro.bundle", 1) and m["kind"] == "repro-bundle" and m["repro_version"]
    assert "vllm_version" in m
    names = {c["name"] for c in m["collectors"]}
    assert {"metrics before", "metrics after", "server log tail", "server command", "server environment",
            "storage census"} <= names
    assert any(n.startswith("py-spy json EngineCore") for n in names)
    assert any(n.startswith("py-spy native EngineCore") for n in names)
    for c in m["collectors"]:
        assert {"command", "exit_code", "duration", "timed_out", "output", "sha256"} <= set(c)
        if c["output"] and c["sha256"]:
            assert sha256_file(b.dir / c["output"]) == c["sha256"], c["name"]
    assert m["stacks"]["duration"] < 15 and m["stacks"]["processes"] == 2
    assert m["analysis"]["verdict"] == "blocked"


def test_the_requests_scenario_reaches_the_bundle_typed_and_reads_back(hung: tuple[FakeServer, Bundle]) -> None:
    """The capture request carries a Scenario: context/scenario.json is its repro.scenario form, read back
    by Scenario.read as the same settings (never the API key); every JSON file of the bundle is stamped."""
    srv, b = hung
    scn = Scenario.read(b.dir / "context" / "scenario.json")
    assert scn == Scenario(server=ServerSettings(port=srv.port))
    for rel in ("manifest.json", "analysis.json", "processes.json", "context/detection.json",
                "context/storage.json", "context/scenario.json"):
        doc = json.loads((b.dir / rel).read_text())
        assert isinstance(doc.get("schema"), str) and isinstance(doc.get("version"), int), rel


def test_bundle_files_and_tarball_are_written(hung: tuple[FakeServer, Bundle]) -> None:
    _, b = hung
    for rel in ("summary.md", "errors.txt", "processes.json", "analysis.json", "context/metrics-before.txt",
                "context/metrics-after.txt", "context/stats-lines.txt", "context/storage.json"):
        assert (b.dir / rel).is_file(), rel
    assert (b.dir / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b.tarball is not None and b.tarball == b.dir.parent / "bundle-001.tar.gz"
    summary = (b.dir / "summary.md").read_text()
    assert "blocked" in summary and "hang_in_scheduler" in summary and "Time to stall" in summary
    assert "Avg prompt throughput" in (b.dir / "context/stats-lines.txt").read_text()


def test_planted_secrets_appear_in_no_file_of_the_unpacked_tarball(hung: tuple[FakeServer, Bundle],
                                                                   tmp_path: Path) -> None:
    """HF token, sk- key, bearer value, --api-key value and a URL password were planted in the target's
    environment, command line and log (and py-spy's --native header prints the command line): none of them,
    nor the API key repro was given, may be in any file of the tarball; the manifest counts, never shows."""
    _, b = hung
    d = unpack(b.tarball, tmp_path / "u")
    files = [p for p in d.rglob("*") if p.is_file()]
    assert len(files) > 10
    for p in files:
        data = p.read_bytes()
        for secret in [*FORBIDDEN, "zz-the-api-key-zz"]:
            assert secret.encode() not in data, f"{secret} leaked into {p.relative_to(d)}"
    # the command line is there, with its secrets masked
    assert "--api-key [REDACTED]" in (d / "context/server-command.txt").read_text()
    red = json.loads((d / "manifest.json").read_text())["redaction"]
    assert red["total"] > 0 and red["rules"]


def test_two_processes_hung_at_the_same_place_share_a_signature_and_another_place_differs(
        hung: tuple[FakeServer, Bundle], tmp_path: Path) -> None:
    """Signature contract: same hang point → same signature (pids differ); other hang point → other signature."""
    _, first = hung
    sigs = {}
    for mode in ("scheduler", "write"):
        srv = start_fake(tmp_path, mode, secrets=False)
        try:
            b = capture(CaptureRequest(out_dir=tmp_path / f"b-{mode}", settings=CaptureSettings(**FAST),
                                       root_pid=srv.pid))
        finally:
            srv.stop()
        sigs[mode] = b.verdict["signature"]
        assert b.verdict["verdict"] == "blocked"
    assert sigs["scheduler"] == first.verdict["signature"]
    assert sigs["write"] != sigs["scheduler"]


def test_a_spinning_engine_is_busy_not_blocked(tmp_path: Path) -> None:
    srv = start_fake(tmp_path, "spin", secrets=False)
    try:
        b = capture(CaptureRequest(out_dir=tmp_path / "b", settings=CaptureSettings(**FAST), root_pid=srv.pid))
    finally:
        srv.stop()
    assert b.verdict["verdict"] == "busy"
    assert b.verdict["stuck_frame"].startswith("spin_in_loop (")


def test_missing_pyspy_still_writes_a_bundle_that_says_how_to_fix_it(tmp_path: Path) -> None:
    """No py-spy: manifest, errors.txt (with the install hint), /proc thread data and the tarball are still there."""
    srv = start_fake(tmp_path, "scheduler", secrets=False)
    try:
        b = capture(CaptureRequest(out_dir=tmp_path / "b", root_pid=srv.pid, url=srv.url, log_path=srv.log,
                                   settings=CaptureSettings(**FAST, pyspy=str(tmp_path / "nope" / "py-spy"))))
    finally:
        srv.stop()
    errors = (b.dir / "errors.txt").read_text()
    assert "py-spy not found" in errors and "pip install py-spy" in errors
    m = json.loads((b.dir / "manifest.json").read_text())
    assert any("py-spy not found" in e["message"] for e in m["errors"])
    assert m["analysis"]["signature"] is None
    assert b.tarball is not None and tarfile.is_tarfile(b.tarball)
    sample = json.loads(next((b.dir / "stacks").glob("EngineCore-*/sample-0.json")).read_text())
    assert sample["procfs"]["threads"] and sample["error"] == "py-spy not found"
    assert (b.dir / "context/metrics-after.txt").stat().st_size > 100


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_real_ptrace_refusal_is_explained_and_the_rest_is_written(tmp_path: Path, scratch: Path) -> None:
    """GIVEN repro running as an unprivileged user and a target owned by root WHEN `repro capture` runs THEN
    py-spy is really refused, and errors.txt + manifest explain ptrace (ptrace_scope, SYS_PTRACE) while
    metrics and the log tail are still in the bundle."""
    srv = start_fake(scratch, "scheduler", secrets=False)
    os.chmod(srv.log, 0o644)
    os.chmod(scratch, 0o777)
    out = scratch / "bundle"
    try:
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                            "repro", "capture", "--pid", str(srv.pid), "--url", srv.url, "--log-file", str(srv.log),
                            "--samples", "2", "--interval", "0.5", "--no-collect-env", "--out", str(out)],
                           capture_output=True, text=True, timeout=120, cwd="/tmp",
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    finally:
        srv.stop()
    assert r.returncode == 0, r.stderr
    errors = (out / "errors.txt").read_text()
    assert "ptrace refused" in errors and "SYS_PTRACE" in errors and "ptrace_scope" in errors
    m = json.loads((out / "manifest.json").read_text())
    assert any(e["what"] == "py-spy" and "ptrace" in e["message"] for e in m["errors"])
    assert (out / "context/metrics-before.txt").stat().st_size > 100
    assert "Avg prompt throughput" in (out / "context/server.log.tail").read_text()


def test_size_budget_trims_the_log_and_never_the_stacks(tmp_path: Path) -> None:
    srv = start_fake(tmp_path, "scheduler", secrets=False)
    with open(srv.log, "a") as f:
        for i in range(40_000):
            f.write(f"(APIServer pid=1) INFO filler line {i:06d} " + "x" * 60 + "\n")
    try:
        b = capture(CaptureRequest(out_dir=tmp_path / "b", root_pid=srv.pid, log_path=srv.log,
                                   settings=CaptureSettings(**FAST, size_budget=1_000_000)))
    finally:
        srv.stop()
    m = json.loads((b.dir / "manifest.json").read_text())
    assert [t["file"] for t in m["trimmed"]] == ["context/server.log.tail"]
    total = sum(p.stat().st_size for p in b.dir.rglob("*") if p.is_file())
    assert total <= 1_000_000
    tail = (b.dir / "context/server.log.tail").read_text()
    assert tail.startswith("[trimmed by repro") and "filler line 039999" in tail
    for c in m["collectors"]:
        if c["output"] and c["output"].startswith("stacks/") and c["sha256"]:
            assert sha256_file(b.dir / c["output"]) == c["sha256"]
    assert b.verdict["verdict"] == "blocked"


def test_capture_into_an_existing_bundle_is_refused(hung: tuple[FakeServer, Bundle]) -> None:
    _, b = hung
    with pytest.raises(UsageError, match="already holds a bundle"):
        capture(CaptureRequest(out_dir=b.dir))


def test_every_token_format_planted_under_innocuous_names_is_in_no_file_of_the_tarball(tmp_path: Path) -> None:
    """GIVEN one value of each token format detect-secrets documents in the server's environment (under names that
    say nothing: NOTE_n off the allow-list, VLLM_NOTE_n on it), its command line, its log (the server echoes them)
    and the scenario JSON WHEN a stall is captured THEN no secret part is in any file of the unpacked tarball,
    VLLM_LOGGING_LEVEL and CUDA_VISIBLE_DEVICES stay readable and every other name is listed, value withheld."""
    from tests.helpers_secrets import FORMATS

    names = sorted(FORMATS)
    env = {f"NOTE_{i}": FORMATS[n][0] for i, n in enumerate(names)}
    env.update({f"VLLM_NOTE_{i}": FORMATS[n][0] for i, n in enumerate(names)})
    env.update(VLLM_LOGGING_LEVEL="DEBUG", CUDA_VISIBLE_DEVICES="0,1")
    args = [a for i, n in enumerate(names) for a in (f"--note-{i}", FORMATS[n][0])]
    srv = start_fake(tmp_path, "scheduler", secrets=False, extra_env=env, extra_args=args,
                     echo_env=[f"NOTE_{i}" for i in range(len(names))])
    try:
        b = capture(CaptureRequest(out_dir=tmp_path / "b", settings=CaptureSettings(**FAST), root_pid=srv.pid,
                                   url=srv.url, log_path=srv.log,
                                   scenario=Scenario(server=ServerSettings(env={n: FORMATS[n][0] for n in names}))))
    finally:
        srv.stop()
    assert b.tarball is not None, b.not_packed
    d = unpack(b.tarball, tmp_path / "u")
    leaks = [(n, str(p.relative_to(d))) for p in d.rglob("*") if p.is_file() for n in names
             if FORMATS[n][1].encode() in p.read_bytes()]
    assert leaks == []
    shown = json.loads((d / "context/server-env.json").read_text())
    assert shown["schema"] == "repro.server-env" and shown["version"] == 1
    assert shown["variables"]["VLLM_LOGGING_LEVEL"] == "DEBUG" and shown["variables"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert {f"NOTE_{i}" for i in range(len(names))} <= set(shown["withheld"])
    assert all(f"VLLM_NOTE_{i}" in shown["variables"] for i in range(len(names)))
    assert "--note-0 " in (d / "context/server-command.txt").read_text()
    m = json.loads((d / "manifest.json").read_text())
    assert m["last_check"]["unreadable"] == [] and m["redaction"]["total"] > len(names)
    assert "Secret check" in (d / "summary.md").read_text()
