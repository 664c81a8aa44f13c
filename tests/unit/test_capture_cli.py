"""Bad input to `repro capture`, `repro analyze`, `repro issue`: one clear line on stderr, non-zero exit."""

from __future__ import annotations

import subprocess
import shutil
from pathlib import Path

import pytest

from repro.errors import EXIT_TARGET, EXIT_USAGE
from tests.helpers_cli import one_line_error, run_cli


def one_line(err: str) -> str:
    return one_line_error(subprocess.CompletedProcess([], 1, "", err), code=None)


def test_capture_of_a_pid_that_does_not_exist(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["capture", "--pid", "4999999"], capsys)
    assert code == EXIT_TARGET
    assert one_line(err) == "error: --pid 4999999: no such process"


def test_capture_of_a_process_that_is_not_vllm(capsys: pytest.CaptureFixture[str]) -> None:
    """A plain process with no vLLM below it (not pytest itself: a session's shared vLLM server is its child)."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        code, _, err = run_cli(["capture", "--pid", str(other.pid)], capsys)
    finally:
        other.kill()
        other.wait()
    assert code == EXIT_USAGE
    assert "is not a vLLM server" in one_line(err)


def test_capture_without_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["capture"], capsys)
    assert code == EXIT_USAGE and "say what to capture" in one_line(err)


@pytest.mark.skipif(shutil.which("docker") is not None, reason="docker is installed here")
def test_capture_with_docker_but_no_docker_installed(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["capture", "--docker", "vllm-prod"], capsys)
    assert code == EXIT_TARGET and "docker command is not installed" in err.splitlines()[0]


def test_capture_of_a_directory_that_is_not_a_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(["capture", str(tmp_path)], capsys)
    assert code == EXIT_USAGE and "not a repro run directory" in one_line(err)


@pytest.mark.parametrize("cmd", ["analyze", "issue"])
def test_a_path_that_is_not_a_bundle(cmd: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    for path, why in ((tmp_path, "no manifest.json"), (tmp_path / "notes.txt", "neither a bundle directory"),
                      (tmp_path / "missing", "no such file or directory")):
        code, _, err = run_cli([cmd, str(path)], capsys)
        assert code == EXIT_USAGE
        assert why in one_line(err)


def test_a_manifest_from_something_else_is_not_a_bundle(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"name": "some other tool"}')
    code, _, err = run_cli(["analyze", str(tmp_path)], capsys)
    assert code == EXIT_USAGE and "was not written by repro" in one_line(err)
