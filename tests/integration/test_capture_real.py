"""Capture on the real vLLM (CPU build, tiny model) with injected stalls, on the shared server.

Acceptance of issue 4: stacks of all processes within 15 s, EngineCore `blocked` in the injected frame,
the same signature for two separate scheduler stalls and a different one for a write stall, secrets
absent from the tarball, and `repro capture` / `repro analyze` / `repro issue` end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from repro.bundle.reader import unpack
from repro.capture.request import Bundle, CaptureRequest
from repro.capture.run import capture
from repro.scenario import CaptureSettings, Scenario, ServerSettings
from tests.helpers_issue import check_report
from tests.integration.conftest import SharedServer, complete

REPO = Path(__file__).resolve().parents[2]
PLANTED = {"HF_TOKEN": "hf_IntegrationPlantedToken0123456789ab", "OPENAI_API_KEY": "sk-integrationPlanted0123456789ABCD"}
PLANTED_API_KEY = "integration-planted-api-key-77"
PLANTED_BEARER = "integrationPlantedBearer4242abc"
PLANTED_URL_PASSWORD = "Integr4tion-Url-Passw0rd"
FORBIDDEN = [*PLANTED.values(), PLANTED_API_KEY, PLANTED_BEARER, PLANTED_URL_PASSWORD]


class Stall:
    """An injected stall on the shared server, with a request in flight so the scheduler runs."""

    def __init__(self, srv: SharedServer, spec: str) -> None:
        self.srv, self.spec = srv, spec

    def __enter__(self) -> "Stall":
        before = len([e for e in self.srv.injected_events() if e.get("event") == "stall"])
        self.srv.inject(self.spec)
        self.thread = threading.Thread(target=self._request, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while len([e for e in self.srv.injected_events() if e.get("event") == "stall"]) <= before:
            assert time.monotonic() < deadline, f"{self.spec}: the injected stall did not happen"
            time.sleep(0.2)
        time.sleep(1.0)  # settle inside the stall
        return self

    def _request(self) -> None:
        try:
            complete(self.srv.url, self.srv.model, list(range(1, 40)), timeout=180)
        except OSError:
            pass

    def __exit__(self, *exc: object) -> None:
        self.srv.release()
        self.thread.join(30)


def request_for(srv: SharedServer, out: Path, **kw: Any) -> CaptureRequest:
    s = srv.server
    settings = kw.pop("settings", CaptureSettings(samples=3, interval=2.0, collect_env=False))
    return CaptureRequest(out_dir=out, settings=settings, root_pid=s.pid, url=srv.url, log_path=s.log_path,
                          storage_path=str(srv.storage), events=srv.injected_events(), server_command=s.command,
                          server_env=s.env, scenario=Scenario(server=ServerSettings(port=s.settings.port)), **kw)


@pytest.fixture(scope="module")
def bundles(vllm_server: SharedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Bundle]]:
    """Three real stalls captured one after the other: scheduler (with collect-env and planted secrets),
    scheduler again, and a hidden-state write stall."""
    tmp = tmp_path_factory.mktemp("capture-real")
    out: dict[str, Bundle] = {}
    # Secrets as a user's deployment has them: in the environment and command line repro passes on (as
    # stress does), and echoed by vLLM and proxies into the log.
    with open(vllm_server.server.log_path, "a") as log:
        log.write(f"(APIServer pid=1) DEBUG upstream https://repro:{PLANTED_URL_PASSWORD}@proxy.example.com/v1 "
                  f"Authorization: Bearer {PLANTED_BEARER} HF_TOKEN={PLANTED['HF_TOKEN']}\n")
    with Stall(vllm_server, "stall-after=0"):
        req = request_for(vllm_server, tmp / "sched-1", api_key=PLANTED_API_KEY,
                          settings=CaptureSettings(samples=3, interval=2.0, collect_env=True,
                                                   collect_env_timeout=90))
        req.server_env = {**vllm_server.server.env, **PLANTED}
        req.server_command = [*vllm_server.server.command, "--api-key", PLANTED_API_KEY]
        out["sched-1"] = capture(req)
    with Stall(vllm_server, "stall-after=0"):
        out["sched-2"] = capture(request_for(vllm_server, tmp / "sched-2"))
    with Stall(vllm_server, "write-stall"):
        out["write"] = capture(request_for(vllm_server, tmp / "write"))
    yield out


def test_stacks_of_all_processes_are_taken_within_15_s(bundles: dict[str, Bundle]) -> None:
    for name, b in bundles.items():
        st = b.manifest["stacks"]
        assert st["processes"] >= 3, name  # APIServer (launcher), EngineCore, Worker
        assert st["duration"] <= 15.0, (name, st)
        labels = {json.loads(p.read_text())["label"] for p in b.dir.glob("stacks/*/sample-0.json")}
        assert {"EngineCore", "Worker", "APIServer"} <= labels
        assert not [e for e in b.errors if "py-spy" in e], b.errors


def test_engine_core_is_blocked_in_the_injected_scheduler_frame(bundles: dict[str, Bundle]) -> None:
    for name in ("sched-1", "sched-2"):
        v = bundles[name].verdict
        assert v is not None and v["stuck_process"] == "EngineCore" and v["verdict"] == "blocked", v
        assert v["stuck_frame"].startswith("repro_injected_scheduler_stall ("), v["stuck_frame"]
        assert [m["id"] for m in v["known_matches"]] == ["repro-injected-scheduler-stall"], v["known_matches"]
    assert [m["id"] for m in bundles["write"].verdict["known_matches"]] == ["repro-injected-write-stall"]


def test_signature_is_the_same_for_two_stalls_and_differs_for_a_write_stall(bundles: dict[str, Bundle]) -> None:
    s1, s2, w = (bundles[n].verdict["signature"] for n in ("sched-1", "sched-2", "write"))
    assert s1 == s2
    assert w != s1
    assert bundles["write"].verdict["culprit"]["stuck_frame"].startswith("repro_injected_write_stall (")


def test_collect_env_ran_with_the_servers_python(bundles: dict[str, Bundle]) -> None:
    b = bundles["sched-1"]
    text = (b.dir / "context/collect-env.txt").read_text()
    assert "vLLM Version" in text and "0.32.0" in text
    ce = next(c for c in b.manifest["collectors"] if c["name"] == "collect-env")
    # the server runs `<venv>/bin/vllm serve`: its Python is that script's interpreter, in the same venv
    assert Path(ce["command"][0]).parent == Path(vllm_server_python_dir()) and ce["exit_code"] == 0


def vllm_server_python_dir() -> str:
    return str(Path(sys.executable).parent)


def test_planted_secrets_are_in_no_file_of_the_unpacked_tarball(bundles: dict[str, Bundle], tmp_path: Path) -> None:
    """The HF token, sk- key, --api-key value, bearer value and URL password reached capture through the
    server environment, its command line, the API key and the real server log: none is in the tarball."""
    b = bundles["sched-1"]
    assert b.tarball is not None
    d = unpack(b.tarball, tmp_path)
    files = [p for p in d.rglob("*") if p.is_file()]
    assert any(p.name == "server.log.tail" for p in files)
    for p in files:
        data = p.read_bytes()
        for s in FORBIDDEN:
            assert s.encode() not in data, f"{s} leaked into {p.relative_to(d)}"
    env = json.loads((d / "context/server-env.json").read_text())
    assert "HF_TOKEN" in env["withheld"] and env["variables"]["VLLM_LOG_STATS_INTERVAL"] == "1.0"
    assert "--api-key [REDACTED]" in (d / "context/server-command.txt").read_text()


def test_cli_capture_analyze_and_issue_end_to_end(vllm_server: SharedServer, bundles: dict[str, Bundle],
                                                  tmp_path: Path) -> None:
    """`repro capture --pid --url` on a live stall, then `repro analyze` groups it with the library captures
    and `repro issue` writes an ISSUE.md with both required sections."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "cli-bundle"
    with Stall(vllm_server, "stall-after=0"):
        r = subprocess.run([sys.executable, "-m", "repro", "capture", "--pid", str(vllm_server.server.pid),
                            "--url", vllm_server.url, "--log-file", str(vllm_server.server.log_path),
                            "--no-collect-env", "--out", str(out)], capture_output=True, text=True, timeout=120,
                           env=env)
    assert r.returncode == 0, r.stderr
    assert "verdict: EngineCore blocked in repro_injected_scheduler_stall" in r.stdout
    assert tarfile.is_tarfile(tmp_path / "cli-bundle.tar.gz")
    r = subprocess.run([sys.executable, "-m", "repro", "analyze", str(out), str(bundles["sched-1"].dir),
                        str(bundles["write"].dir)], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert f"{bundles['sched-1'].verdict['signature']}: 2 bundle(s)" in r.stdout
    r = subprocess.run([sys.executable, "-m", "repro", "issue", str(out), "-o", str(out / "ISSUE.md")],
                       capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    md = (out / "ISSUE.md").read_text()
    check_report(md)
    assert md.startswith("# [Bug]: ") and "### Your current environment" in md and "### 🐛 Describe the bug" in md
    assert "repro capture --pid" in md and "<details>" in md
