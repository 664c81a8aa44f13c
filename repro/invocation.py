"""The repro command line that started this process, secrets masked: the reproducer of a report.

``repro.cli.main`` records the arguments it parses (:func:`record`); stress, watch, trial and
capture put :func:`command_line` into their scenario and capture request, so ISSUE.md can show
the exact command that reproduced the stall instead of a generic one.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from repro.secrets.redact import Redactor

_ARGS: list[str] | None = None


def record(args: Sequence[str] | None) -> None:
    """Remember the arguments `repro` was called with (None: this process's sys.argv)."""
    global _ARGS
    _ARGS = list(args) if args is not None else list(sys.argv[1:])


def command_line(extra_secrets: Sequence[str] = ()) -> list[str] | None:
    """`["repro", ...args]` with secret flag values (`--api-key X`) and known secrets masked; None when
    repro was not started through its CLI (a library call)."""
    if _ARGS is None:
        return None
    return Redactor(extra_values=[s for s in extra_secrets if s]).argv(["repro", *_ARGS])
