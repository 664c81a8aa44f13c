"""`repro stress` bad input: one clear line and the documented exit code, before any server starts.

Contract: zero/negative concurrency, an unparseable duration and a prompts file
with a bad line exit 2; an unreachable --url exits 3 with the URL named; no
traceback in any of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.helpers_cli import run_cli


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code, _, err = run_cli(["stress", *argv], capsys)
    return code, err


@pytest.mark.parametrize("conc", ["0", "-3"])
def test_concurrency_below_one_exits_2(conc: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run(["--url", "http://127.0.0.1:9", "--concurrency", conc, "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "--concurrency" in err and "Traceback" not in err


def test_unparseable_duration_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run(["--url", "http://127.0.0.1:9", "--duration", "six hours", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "cannot parse --duration" in err and "Traceback" not in err


def test_two_durations_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run(["--url", "http://127.0.0.1:9", "--hours", "1", "--minutes", "5"], capsys)
    assert code == 2 and "only one of" in err


def test_bad_prompts_line_exits_2_naming_the_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "ok"}\n{"prompt": \n', encoding="utf-8")
    code, err = run(["--url", "http://127.0.0.1:9", "--prompts", str(p), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "line 2" in err and "Traceback" not in err


def test_unreachable_url_exits_3_and_writes_summary(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Nothing listens on the port: exit 3, the URL in the message, summary.json says target-error."""
    url = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "run"
    code, err = run(["--url", url, "--duration", "5", "--out", str(out)], capsys)
    assert code == 3 and url in err and "Traceback" not in err
    s = json.loads((out / "summary.json").read_text())
    assert s["schema"] == "repro.stress.summary" and s["version"] == 1
    assert s["outcome"] == "target-error" and s["exit_code"] == 3


def test_url_without_scheme_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["--url", "127.0.0.1:8000"], capsys)
    assert code == 2 and "http://" in err
