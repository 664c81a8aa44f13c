"""`repro trial`: one stress run for `git bisect run` (exit 0 good, 1 stall, 125 could not test).

Takes exactly the options of `repro stress` (it is the same run) and maps the outcome to the
exit codes `git bisect run` understands:

    0    no stall within the duration  -> good
    1    a classified stall             -> bad
    125  the target did not start or could not be reached, or its hidden-state files failed
         their check (stress exit 4: the load ran but its output was not verified) -> skip this commit
    2    bad options (fix them first: git bisect run would read 2 as "bad")
    130  interrupted (git bisect run stops)
"""

from __future__ import annotations

from typing import Any

import click

from repro.errors import EXIT_FILES, EXIT_OK, EXIT_SKIP, EXIT_STALL, EXIT_TARGET, TargetError


def _stress() -> click.Command:
    from repro.commands.stress import command as stress

    return stress


def map_exit(code: int) -> int:
    """stress exit code -> git bisect run exit code."""
    if code in (EXIT_TARGET, EXIT_FILES):
        return EXIT_SKIP
    return code


def _run(**kw: Any) -> int:
    try:
        code = _stress().callback(**kw)  # type: ignore[misc]
    except TargetError as exc:
        click.echo(f"error: {exc.message}", err=True)
        click.echo("trial: could not test (exit 125: git bisect run skips this commit)", err=True)
        return EXIT_SKIP
    code = int(code or 0)
    out = map_exit(code)
    verdict = {EXIT_OK: "good (no stall)", EXIT_STALL: "bad (stall)", EXIT_SKIP: "skip (could not test)"}
    click.echo(f"trial: exit {out}: {verdict.get(out, 'see above')}", err=True)
    return out


HELP = """One stress run for `git bisect run`: the options of `repro stress`, git's exit codes.

\b
    0    no stall within the duration             -> good
    1    a classified stall                       -> bad
    125  the target did not start / was unreachable, or its
         hidden-state files failed their check     -> skip this commit
    2    bad options (fix them first: git bisect run reads 2 as "bad")
    130  interrupted (git bisect run stops)

\b
    git bisect run repro trial --duration 2h --concurrency 32 --window 180
"""


def _build() -> click.Command:
    stress = _stress()
    return click.Command(
        "trial", params=list(stress.params), callback=_run, context_settings=dict(stress.context_settings),
        help=HELP, short_help="one stress run for `git bisect run` (0 good, 1 stall, 125 skip)")


command = _build()
