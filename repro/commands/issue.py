"""`repro issue BUNDLE`: write ISSUE.md for vLLM's bug tracker from a bundle."""

from __future__ import annotations

from pathlib import Path

import click

from repro.analyze import catalogue as cat
from repro.analyze.issue import STORAGE_TEMPLATE, find_template, render_reports
from repro.analyze.load import open_bundle
from repro.errors import UsageError


@click.command("issue")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--template", default=None, metavar="PATH",
              help="Template to render (default ./ISSUE_TEMPLATE.md, else the repro checkout's).")
@click.option("--out", default=None, metavar="FILE",
              help="Where to write (default: ISSUE.md inside the bundle directory, or <name>.ISSUE.md beside "
                   "a tarball). '-' prints to stdout.")
@click.option("--storage-template", default=None, metavar="PATH",
              help="Template of a storage report (default ./ISSUE_TEMPLATE_STORAGE.md, else the repro checkout's).")
@click.option("--bisect", "bisect_dir", default=None, type=click.Path(path_type=Path), metavar="DIR",
              help="A `repro bisect` run directory: its minimal reproducer section (ISSUE_bisect.md) is added.")
def command(bundle: Path, template: str | None, storage_template: str | None, out: str | None,
            bisect_dir: Path | None) -> int:
    """Render ISSUE.md (vLLM's bug-report shape) from BUNDLE (directory or .tar.gz).

    Title `[Bug]: ...`, "Your current environment" with collect-env in <details>,
    "🐛 Describe the bug" with the reproducer commands, what was observed, the stuck
    stacks (EngineCore first, collapsed) and the signature. Attach the bundle's .tar.gz.

    A bundle that shows a storage problem (storage-leak / storage-exhaustion warnings, or a
    death its log blames on the hidden-state store) gets a storage report instead: what
    leaks, under which client behaviour, how fast, the census. When it also shows a genuine
    stall, the storage report is a second file (ISSUE-storage.md) beside ISSUE.md.
    """
    cat.load()  # a malformed REPRO_CATALOGUE is a usage error here, not a silent "catalogue unreadable"
    section = None
    if bisect_dir is not None:
        part = bisect_dir / "ISSUE_bisect.md"
        if not part.is_file():
            raise UsageError(f"--bisect {bisect_dir}: no ISSUE_bisect.md there (is it a `repro bisect` run directory?)")
        section = part.read_text().strip()
    tpl = find_template(template)
    stpl = find_template(storage_template, STORAGE_TEMPLATE) if storage_template else None  # else when needed
    is_tar = bundle.is_file()
    bdir = open_bundle(bundle)
    tarball = bundle if is_tar else None
    reports = render_reports(bdir, tpl, stpl, tarball)
    texts = list(reports.values())  # the stall report first when there are two
    if section:
        texts[0] = texts[0].rstrip() + "\n\n" + section + "\n"
    if out == "-":
        click.echo("\n---\n\n".join(texts), nl=False)
        return 0
    dest = Path(out) if out else (bundle.parent / f"{bdir.name}.ISSUE.md" if is_tar else bdir / "ISSUE.md")
    dest.write_text(texts[0])
    click.echo(str(dest))
    if len(texts) > 1:
        second = dest.with_name(dest.name.replace("ISSUE", "ISSUE-storage") if "ISSUE" in dest.name
                                else f"{dest.stem}-storage{dest.suffix}")
        second.write_text(texts[1])
        click.echo(str(second))
    return 0
