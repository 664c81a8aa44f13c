"""`repro issue PATH`: write ISSUE.md for vLLM's bug tracker from a bundle or a run directory."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from repro.analyze import catalogue as cat
from repro.analyze.issue import PLACEHOLDERS, STORAGE_TEMPLATE, find_template, render_source
from repro.analyze.sources import open_source
from repro.errors import UsageError

EPILOG = "\b\nPlaceholders of the templates:\n" + "\n".join(f"  {k:<22} {v}" for k, v in PLACEHOLDERS.items())


@click.command("issue", epilog=EPILOG)
@click.argument("path", metavar="BUNDLE|RUN_DIR", type=click.Path(path_type=Path))
@click.option("--template", default=None, metavar="PATH",
              help="Template of the main report (default by outcome: ISSUE_TEMPLATE.md for a stall, "
                   "ISSUE_TEMPLATE_DEATH.md for a death, ISSUE_TEMPLATE_CLEAN.md for a clean run; ./ first, "
                   "else the repro checkout's).")
@click.option("-o", "--out", default=None, metavar="FILE",
              help="Where to write; '-' prints to stdout. Default: stdout when it is not a terminal, else ISSUE.md "
                   "inside the bundle (or run) directory, or <name>.ISSUE.md beside a tarball.")
@click.option("--storage-template", default=None, metavar="PATH",
              help="Template of a storage report (default ./ISSUE_TEMPLATE_STORAGE.md, else the repro checkout's).")
@click.option("--bisect", "bisect_dir", default=None, type=click.Path(path_type=Path), metavar="DIR",
              help="A `repro bisect` run directory: its minimal reproducer (ISSUE_bisect.md) goes into the report "
                   "(found by itself when the bundle is one of that search's trials).")
def command(path: Path, template: str | None, storage_template: str | None, out: str | None,
            bisect_dir: Path | None) -> int:
    """Render ISSUE.md (vLLM's bug-report shape) from a bundle (directory or .tar.gz) or a run directory.

    Every outcome has its report: a stall (the stuck stacks, the signature), a death (the fatal
    traceback from the server log, the exception in the title), a storage problem (what leaks, under
    which client behaviour, how fast, the final census: ISSUE-storage.md beside ISSUE.md when the run
    also stalled), and a clean run (a short "no reproduction in N hours at concurrency C" note for an
    existing upstream thread). A run directory needs no bundle: its summary.json and events are enough.

    Each report carries the reproducer (the exact repro command, the server command, the vLLM version,
    the bisect minimal configuration) and a "Before submitting" section. Templates are yours to edit; a
    placeholder repro does not know is an error naming it (exit 2).

    \b
    Exit codes: 0 written, 2 bad input (not a bundle or run directory, a bad template).
    """
    cat.load()  # a malformed REPRO_CATALOGUE is a usage error here, not a silent "catalogue unreadable"
    if bisect_dir is not None and not (bisect_dir / "ISSUE_bisect.md").is_file():
        raise UsageError(f"--bisect {bisect_dir}: no ISSUE_bisect.md there (is it a `repro bisect` run directory?)")
    tpl = find_template(template) if template else None
    stpl = find_template(storage_template, STORAGE_TEMPLATE) if storage_template else None  # else when needed
    src = open_source(path)
    for note in src.notes:
        click.echo(f"note: {note}", err=True)
    reports = render_source(src, tpl, stpl, bisect_dir)
    texts = list(reports.values())  # the main report first when there are two
    if bisect_dir is not None:
        section = (bisect_dir / "ISSUE_bisect.md").read_text().strip()
        if section not in texts[0]:  # a template of the user's without {{ minimal_config }}
            texts[0] = texts[0].rstrip() + "\n\n" + section + "\n"
    if out == "-" or (out is None and not sys.stdout.isatty()):
        click.echo("\n---\n\n".join(texts), nl=False)
        return 0
    base = src.bundle or src.run_dir
    assert base is not None
    if out:
        dest = Path(out)
    elif src.tarball is not None and Path(path).is_file():
        dest = src.tarball.parent / f"{base.name}.ISSUE.md"
    else:
        dest = base / "ISSUE.md"
    try:
        dest.write_text(texts[0])
        click.echo(str(dest))
        if len(texts) > 1:
            second = dest.with_name(dest.name.replace("ISSUE", "ISSUE-storage") if "ISSUE" in dest.name
                                    else f"{dest.stem}-storage{dest.suffix}")
            second.write_text(texts[1])
            click.echo(str(second))
    except OSError as exc:
        raise UsageError(f"-o {dest}: cannot write it ({exc.strerror or exc})") from None
    return 0
