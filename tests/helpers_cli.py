"""Run the `repro` CLI in tests: in-process (with `repro.cli.main`'s exit codes and one-line errors) or as a
subprocess; check a one-line error; replace a core entry point by a recorder of what the CLI handed it."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from typing import Any

import pytest

from repro.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`repro ARGS` in-process under pytest's capsys: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as ei:
        main(args)
    out, err = capsys.readouterr()
    return int(ei.value.code or 0), out, err


def repro_inprocess(*args: str) -> subprocess.CompletedProcess[str]:
    """`repro ARGS` in-process, stdout and stderr redirected: a CompletedProcess like `repro_subprocess`'s."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def repro_subprocess(*args: str, env: dict[str, str] | None = None,
                     timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m repro ARGS` in a process of its own (for what needs a fresh interpreter or real signals);
    `env` is added to this process's environment."""
    return subprocess.run([sys.executable, "-m", "repro", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env} if env is not None else None)


def one_line_error(r: subprocess.CompletedProcess[str], code: int | None = 2, text: str | None = None,
                   help_ok: bool = False, click_usage: bool = False) -> str:
    """The one `error: ...` line of a failed run, returned: exit `code` (None: any non-zero), no traceback,
    nothing else on stderr -- or, with `help_ok`, only the error's help text after a blank line. With
    `click_usage`, also click's own form of a bad option value (`Usage:`, `Try ...`, then one `Error:` line)."""
    if code is not None:
        assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    else:
        assert r.returncode != 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    if click_usage and lines and lines[0].startswith("Usage: "):
        assert len(lines) == 3 and lines[1].startswith("Try ") and lines[2].startswith("Error: "), r.stderr
        if text is not None:
            assert text in lines[2], lines[2]
        return lines[2]
    head, _, rest = r.stderr.strip("\n").partition("\n\n")
    lines = [ln for ln in (head if help_ok else r.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert help_ok or not rest.strip(), r.stderr
    if text is not None:
        assert text in lines[0], lines[0]
    return lines[0]


class Recorded(Exception):
    """Raised by a recorder: the command got as far as its core entry point, with these arguments."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__("recorded")
        self.args_, self.kwargs = args, kwargs


def recorder(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """Replace `module.attr` (a function or class) by one that raises :class:`Recorded` with its arguments."""
    module, _, attr = target.rpartition(".")

    def record(*args: Any, **kwargs: Any) -> Any:
        raise Recorded(args, kwargs)

    monkeypatch.setattr(f"{module}.{attr}", record)


def call_recorded(*args: str) -> Recorded:
    """Run `repro ARGS` in-process until a recorder stops it; fail with the CLI's output if none does."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except Recorded as rec:
            return rec
        except SystemExit as exc:
            pytest.fail(f"repro {' '.join(args)} exited {exc.code} before its core entry point:\n"
                        f"{out.getvalue()}{err.getvalue()}")
    pytest.fail("no recorder was called")
