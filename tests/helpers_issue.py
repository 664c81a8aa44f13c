"""Checks every rendered report must pass: GitHub-flavoured Markdown that a linter accepts, balanced fences,
closed <details> blocks, no unfilled placeholder, no "None" / "(unknown)"."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator

# Rules off, with the reason: MD013 (line length: stack frames and command lines are long by nature), MD033
# (inline HTML: vLLM's own template puts collect-env in <details>/<summary>), MD001 (the `# [Bug]: ...` title
# line sits above vLLM's `###` form fields, as in the issue GitHub shows).
LINT_OFF = ("md013", "md033", "md001")


def lint(md: str) -> list[str]:
    """pymarkdownlnt (a GFM-compliant linter) findings, one line each; [] when the report is clean."""
    from pymarkdown.api import PyMarkdownApi

    api = PyMarkdownApi()
    for rule in LINT_OFF:
        api.disable_rule_by_identifier(rule)
    res = api.scan_string(md)
    return [f"{f.line_number}:{f.column_number} {f.rule_id} {f.rule_description} {f.extra_error_information}"
            for f in res.scan_failures] + [str(e) for e in res.pragma_errors]


def fences_balanced(md: str) -> bool:
    """Every fenced block closes before the end of the report (markdown-it closes a stray one at EOF silently)."""
    from markdown_it import MarkdownIt

    lines = md.splitlines()
    for tok in MarkdownIt("commonmark").parse(md):
        if tok.type == "fence" and tok.map is not None:
            last = lines[tok.map[1] - 1].strip() if tok.map[1] - 1 < len(lines) else ""
            if tok.map[1] - tok.map[0] < 2 or not (last.startswith(tok.markup) and set(last) == {tok.markup[0]}):
                return False
    return True


def details_closed(md: str) -> bool:
    """Outside code, every <details> has its </details>, in order."""
    from markdown_it import MarkdownIt

    depth = 0
    for tok in MarkdownIt("commonmark").parse(md):
        if tok.type not in ("html_block", "inline"):
            continue
        for m in re.finditer(r"</?details>", tok.content):
            depth += -1 if m.group(0).startswith("</") else 1
            if depth < 0:
                return False
    return depth == 0


def check_report(md: str) -> None:
    """Every check above, with what failed in the message."""
    problems = lint(md)
    assert not problems, "\n".join(problems) + "\n\n" + md
    assert fences_balanced(md), md
    assert details_closed(md), md
    assert not re.search(r"\{\{\s*\w+\s*\}\}", md) and "<!--" not in md, "an unfilled placeholder or a comment"
    for bad in ("None", "(unknown)", "null"):
        assert not re.search(rf"(?<![\w.]){re.escape(bad)}(?![\w])", md), (bad, md)


@contextlib.contextmanager
def stdout_is_a_terminal() -> Iterator[None]:
    """Make sys.stdout report a TTY (pytest's capture is none): `repro issue` then writes its file."""
    orig = sys.stdout.isatty
    sys.stdout.isatty = lambda: True  # type: ignore[method-assign]
    try:
        yield
    finally:
        sys.stdout.isatty = orig  # type: ignore[method-assign]
