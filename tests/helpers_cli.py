"""Run the `repro` CLI in-process and get (exit code, stdout, stderr)."""

from __future__ import annotations

import pytest

from repro.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ei:
        main(args)
    out, err = capsys.readouterr()
    return int(ei.value.code or 0), out, err
