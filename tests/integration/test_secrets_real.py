"""Secrets planted in a real vLLM server's environment and command line never reach its bundle.

A server of the test's own (the shared one must not carry them), started with credentials under names that
say nothing (webhooks, payment, CI and chat-bot tokens), an allow-listed NCCL_ variable that vLLM's
collect_env prints, a proxy with a password, `--api-key` (vLLM echoes its arguments into the log) and a
secret inside `--hf-overrides`. A real scheduler stall is injected and captured with `repro capture`
(collect-env on); the unpacked tarball is scanned: nothing found.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from repro.bundle.reader import unpack
from repro.server.launcher import VllmServer
from tests.helpers_secrets import FORMATS
from tests.integration.conftest import start_server

REPO = Path(__file__).resolve().parents[2]
API_KEY = "Rt7xQ2vN9mK4pL8wZ3sB6hJ1dF5gC0aY"  # random: no format, vLLM's --api-key
ENV = {
    "ALERTS_WEBHOOK": FORMATS["SlackDetector"][0],
    "BILLING": FORMATS["StripeDetector"][0],
    "CI_NOTE": FORMATS["GitLabTokenDetector"][0],
    "CHATBOT": FORMATS["TelegramBotTokenDetector"][0],
    "MAIL_RELAY": FORMATS["SendGridDetector"][0],
    "NCCL_REPRO_NOTE": FORMATS["DiscordBotTokenDetector"][0],  # allow-listed and printed by collect_env
    "HTTPS_PROXY": "http://proxyuser:" + "Pl4ntedProxyPassw0rd" + "@127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
    "VLLM_LOGGING_LEVEL": "INFO",
}
HF_OVERRIDE_SECRET = FORMATS["GitHubTokenDetector"][0]
FORBIDDEN = [API_KEY, HF_OVERRIDE_SECRET, "Pl4ntedProxyPassw0rd",
             *(FORMATS[k][1] for k in ("SlackDetector", "StripeDetector", "GitLabTokenDetector",
                                       "TelegramBotTokenDetector", "SendGridDetector", "DiscordBotTokenDetector"))]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VllmServer, Path]]:
    tmp = tmp_path_factory.mktemp("secrets-real")
    control = tmp / "inject.control"
    srv = start_server(tmp, inject_control=str(control), env=dict(ENV),
                       extra_args=["--api-key", API_KEY,
                                   "--hf-overrides", json.dumps({"repro_note": HF_OVERRIDE_SECRET})])
    try:
        yield srv, control
    finally:
        srv.stop()
        shutil.rmtree(srv.settings.storage, ignore_errors=True)


def _request(srv: VllmServer) -> None:
    body = json.dumps({"model": srv.model_name, "prompt": list(range(1, 40)), "max_tokens": 1}).encode()
    req = urllib.request.Request(srv.url + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    try:
        urllib.request.urlopen(req, timeout=180).read()
    except OSError:
        pass


def _stalls(run_dir: Path) -> int:
    p = run_dir / "injected.jsonl"
    return sum(1 for ln in p.read_text().splitlines() if '"stall"' in ln) if p.exists() else 0


def test_planted_secrets_are_in_no_file_of_a_real_stall_bundle(server: tuple[VllmServer, Path],
                                                               tmp_path: Path) -> None:
    """GIVEN a real vLLM with credentials in its environment and argv, stalled in its scheduler WHEN `repro
    capture` takes the bundle THEN no planted value is in any file of the unpacked tarball, `repro scrub` finds
    nothing, the stacks are still taken within their bound, and allow-listed settings stay readable."""
    srv, control = server
    control.write_text("stall-after=0")
    th = threading.Thread(target=_request, args=(srv,), daemon=True)
    th.start()
    deadline = time.monotonic() + 60
    while _stalls(srv.run_dir) == 0:
        assert time.monotonic() < deadline, "the injected stall did not happen"
        time.sleep(0.2)
    time.sleep(1.0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "bundle"
    try:
        r = subprocess.run([sys.executable, "-m", "repro", "capture", "--pid", str(srv.pid), "--url", srv.url,
                            "--log-file", str(srv.log_path), "--api-key", API_KEY, "--out", str(out)],
                           capture_output=True, text=True, timeout=300, env=env)
    finally:
        control.write_text("release")
        th.join(60)
    assert r.returncode == 0, r.stderr
    assert "verdict: EngineCore blocked in repro_injected_scheduler_stall" in r.stdout
    tar = tmp_path / "bundle.tar.gz"
    d = unpack(tar, tmp_path / "u")
    files = [p for p in d.rglob("*") if p.is_file()]
    assert {"server.log.tail", "collect-env.txt", "server-env.json", "server-command.txt"} <= {p.name for p in files}
    leaks = [(s[:6], str(p.relative_to(d))) for p in files for s in FORBIDDEN if s.encode() in p.read_bytes()]
    assert leaks == []
    log = (d / "context/server.log.tail").read_text()
    assert "non-default args" in log and "[REDACTED]" in log  # vLLM echoed --api-key; masked, the line kept
    shown = json.loads((d / "context/server-env.json").read_text())
    assert shown["variables"]["VLLM_LOGGING_LEVEL"] == "INFO" and shown["variables"]["NO_PROXY"] == "127.0.0.1,localhost"
    assert {"ALERTS_WEBHOOK", "BILLING", "CI_NOTE", "CHATBOT", "MAIL_RELAY"} <= set(shown["withheld"])
    m = json.loads((d / "manifest.json").read_text())
    assert m["stacks"]["duration"] <= 15.0 and m["last_check"]["unreadable"] == []
    s = subprocess.run([sys.executable, "-m", "repro", "scrub", str(tar)], capture_output=True, text=True,
                       timeout=300, env=env)
    assert s.returncode == 0, s.stdout + s.stderr
