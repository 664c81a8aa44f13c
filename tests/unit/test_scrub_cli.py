"""`repro scrub PATH`: the same secret check as capture's last one, on any bundle, tarball or directory."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from tests.helpers_cli import run_cli
from tests.helpers_secrets import FORMATS

REPO = Path(__file__).resolve().parents[2]


def _planted_bundle(tmp: Path) -> tuple[Path, dict[str, str]]:
    """A copy of a real trace bundle with secrets planted the way they leak: a log line, a JSON string and a
    file added by hand."""
    b = tmp / "bundle-001"
    shutil.copytree(REPO / "traces" / "scheduler-stall", b)
    slack, stripe, gh = (FORMATS[k][0] for k in ("SlackDetector", "StripeDetector", "GitHubTokenDetector"))
    with open(b / "context/server.log.tail", "a") as f:
        f.write(f"(APIServer pid=1) INFO alerts to {slack}\n")
    scen = b / "context/scenario.json"
    scen.write_text(json.dumps({"note": f"billing {stripe}"}, indent=1) + "\n")
    (b / "notes.txt").write_text(f"line one\nmy token is {gh}\n")
    return b, {"slack": slack.rsplit("/", 1)[1], "stripe": stripe, "github": gh}


def test_the_trace_bundles_are_clean(capsys: pytest.CaptureFixture[str]) -> None:
    """traces/ (two bundle directories, their tarballs, a script and a README) holds no secret: exit 0."""
    code, out, err = run_cli(["scrub", str(REPO / "traces")], capsys)
    assert code == 0, out + err
    assert out == "" and "checked: clean" in err


def test_planted_secrets_are_named_file_line_rule_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN a bundle with three planted secrets WHEN scrubbed as a directory and as a tarball THEN exit 1 and one
    FILE:LINE:RULE line for each, never the value."""
    b, secrets = _planted_bundle(tmp_path)
    code, out, err = run_cli(["scrub", str(b)], capsys)
    assert code == 1
    assert f"{b}/context/server.log.tail:128:slack_token" in out.splitlines()
    assert f"{b}/context/scenario.json:2:stripe_access_key" in out.splitlines()
    assert f"{b}/notes.txt:2:github_token" in out.splitlines()
    for v in secrets.values():
        assert v not in out + err
    tar = tmp_path / "bundle-001.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(b, arcname="bundle-001")
    code, out, _ = run_cli(["scrub", str(tar)], capsys)
    assert code == 1 and f"{tar}!bundle-001/notes.txt:2:github_token" in out


def test_fix_writes_a_clean_copy_and_leaves_the_original(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--fix -o writes a redacted copy (JSON still valid, an older bundle's environment by allow-list) that scrub
    then finds clean; the original is untouched."""
    b, secrets = _planted_bundle(tmp_path)
    before = (b / "notes.txt").read_bytes()
    code, _, err = run_cli(["scrub", str(b), "--fix", "-o", str(tmp_path / "clean")], capsys)
    assert code == 0, err
    assert "checked again: clean" in err
    assert (b / "notes.txt").read_bytes() == before
    c = tmp_path / "clean"
    for p in c.rglob("*"):
        if p.is_file():
            for v in secrets.values():
                assert v.encode() not in p.read_bytes(), p
    assert json.loads((c / "context/scenario.json").read_text())["note"] == "billing [REDACTED]"
    env = json.loads((c / "context/server-env.json").read_text())
    assert env["variables"]["VLLM_LOG_STATS_INTERVAL"] == "1.0" and "HOME" in env["withheld"]
    assert run_cli(["scrub", str(c)], capsys)[0] == 0
    code, _, err = run_cli(["scrub", str(b), "--fix", "-o", str(c)], capsys)
    assert code == 2 and "already exists" in err


def test_a_file_that_cannot_be_read_completely_is_never_called_clean(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A binary that is not a PNG cannot be checked: it is named with the reason, exit 1, and --fix writes nothing."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "ok.txt").write_text("nothing here\n")
    (tmp_path / "d" / "blob.bin").write_bytes(b"\x00\xff\x10secret?")
    code, out, _ = run_cli(["scrub", str(tmp_path / "d")], capsys)
    assert code == 1 and f"{tmp_path}/d/blob.bin: not checked: not UTF-8 text" in out
    code, _, err = run_cli(["scrub", str(tmp_path / "d"), "--fix"], capsys)
    assert code == 1 and "not written: " in err and not (tmp_path / "d-scrubbed").exists()


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["scrub", str(tmp_path / "nope")], capsys)
    assert code == 2 and err.strip() == f"error: {tmp_path / 'nope'}: no such file or directory"
    code, _, err = run_cli(["scrub", str(REPO / "traces"), "-o", str(tmp_path / "x")], capsys)
    assert code == 2 and "add --fix" in err
