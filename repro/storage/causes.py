"""Name the storage cause of a dead server from its log (ENOSPC and other I/O errors in the hidden-state write)."""

from __future__ import annotations

import re

_PATTERNS = [
    ("no-space", re.compile(r"No space left on device|os error 28|\[Errno 28\]|ENOSPC", re.I)),
    ("read-only", re.compile(r"Read-only file system|os error 30|\[Errno 30\]", re.I)),
    ("io-error", re.compile(r"Input/output error|os error 5\b|\[Errno 5\]", re.I)),
    ("permission", re.compile(r"Permission denied.*(safetensors|shared_storage|hidden)", re.I)),
]
_WRITE_CONTEXT = re.compile(r"save_file|safetensors|hidden_states|HiddenStatesConnector|shared_storage_path", re.I)


def storage_cause(log_text: str) -> dict[str, str] | None:
    """The first storage failure (ENOSPC also covers running out of inodes) in a log, with the line that shows it; None when the log shows none.

    ``in_hidden_state_write`` says whether the lines around it name the hidden-state write.
    """
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        for kind, pat in _PATTERNS:
            if pat.search(line):
                around = "\n".join(lines[max(0, i - 30): i + 5])
                return {"kind": kind, "line": line.strip()[:500],
                        "in_hidden_state_write": "yes" if _WRITE_CONTEXT.search(around) else "unknown"}
    return None
