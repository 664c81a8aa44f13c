"""`repro known [ID] [--check BUNDLE]`: the catalogue of known vLLM hangs, and why a bundle matches one."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import click

from repro.analyze import catalogue as cat
from repro.analyze import known
from repro.analyze.evidence import gather
from repro.bundle.reader import open_bundle
from repro.analyze.stacks import analyze_bundle_dir
from repro.errors import UsageError

catalogue_option = click.option(
    "--catalogue", "catalogues", multiple=True, type=click.Path(path_type=Path), metavar="PATH",
    help=f"A local catalogue file or directory of *.toml to add (repeatable; also ${cat.ENV}, ':'-separated). "
         "An entry with a shipped entry's id replaces it.")


def _wrap(text: str, indent: str = "    ") -> str:
    return textwrap.fill(text, 108, initial_indent=indent, subsequent_indent=indent)


def _entry_text(e: cat.Entry) -> str:
    lines = [f"{e.id}: {e.title}", f"  origin {e.origin}, status {e.status}, evidence of {e.evidence_date}"]
    for u in e.upstream:
        lines.append(f"  {u.ref} ({u.kind}, {u.state}) {u.url}" + (f"\n      {u.note}" if u.note else ""))
    if e.origin != "injected":
        lines.append(f"  affected: {e.affected or 'not recorded'}; fixed in: {e.fixed_in or 'no release known'}")
        if e.version_note:
            lines.append(_wrap(e.version_note))
    lines += ["  workaround:", _wrap(e.workaround)]
    if e.evidence:
        lines += ["  evidence:", _wrap(e.evidence)]
    lines.append("  rule" + (f" (min score {e.min_score:.2f})" if e.min_score else "") + ":")
    for c in e.conditions:
        tag = "required" if c.required else ("unless  " if c.unless else f"w={c.weight:<5g} ")
        lines.append(f"    {tag} {c.describe()}")
    lines.append(f"  from {e.source}")
    return "\n".join(lines)


def _mark(p: known.PartResult) -> str:
    if p.held is None:
        return "?"
    if p.unless:
        return "!" if p.held else "-"
    return "+" if p.held else "x"


def _check_text(bundle: Path, results: list[known.Match], c: cat.Catalogue, show_all: bool) -> str:
    hits = [m for m in results if m.matched]
    out = [f"{bundle}: " + (f"{len(hits)} match(es) among {len(c.entries)} entries (catalogue of {c.date})" if hits
                            else f"no known match among {len(c.entries)} entries (catalogue of {c.date})")]
    for m in results:
        if not (m.matched or show_all or m.score > 0):
            continue
        head = "MATCH" if m.matched else "no   "
        out.append(f"\n{head} {m.entry.id} (score {m.score:.2f}): {m.entry.title}")
        if m.entry.origin == "injected":
            out.append("      injected by repro: not a vLLM bug")
        else:
            out.append(f"      {m.entry.refs}" + (f"; {m.version.text}" if m.matched else ""))
        if not m.matched and m.why_not:
            out.append(f"      why not: {m.why_not}")
        for p in m.parts:
            kind = "required" if p.required else ("unless" if p.unless else f"w={p.weight:g}")
            out.append(f"   {_mark(p)} [{kind}] {p.rule}" + (f"\n        {p.detail}" if p.detail else ""))
    rest = [m for m in results if not (m.matched or show_all or m.score > 0)]
    if rest:
        out.append(f"\n{len(rest)} other entries share nothing with this bundle (--all lists them).")
    out.append("\nLegend: + holds, x fails, ? cannot be checked with this bundle, ! an unless part holds "
               "(it rules the entry out), - an unless part does not hold.")
    return "\n".join(out)


@click.command("known")
@click.argument("entry_id", required=False, metavar="[ID]")
@click.option("--check", "bundle", default=None, type=click.Path(path_type=Path), metavar="BUNDLE",
              help="Explain how BUNDLE (directory or .tar.gz) fares against each entry (or only ID).")
@click.option("--all", "show_all", is_flag=True, help="With --check: also list entries that share nothing with it.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@catalogue_option
def command(entry_id: str | None, bundle: Path | None, show_all: bool, as_json: bool,
            catalogues: tuple[Path, ...]) -> int:
    """List the catalogue of known vLLM hangs, show one entry, or explain a bundle's match.

    \b
    repro known                          every entry: id, status, upstream numbers, title
    repro known vllm-52247-async-output-event-wait
    repro known --check BUNDLE           each entry's rule parts against BUNDLE: + holds, x fails
    repro known --catalogue mine.toml    with local entries added (README: Known hangs)

    An entry matches when all its required rule parts hold and no `unless` part holds; the score
    (weight of the parts that hold over all parts) ranks matches. A bundle in which repro injected a
    fault matches only repro's own injected-fault entries.
    """
    c = cat.load(list(catalogues))
    if entry_id is not None and c.get(entry_id) is None:
        near = [e.id for e in c.entries if entry_id.lower() in e.id]
        raise UsageError(f"no entry {entry_id!r} in the catalogue" + (f" (did you mean {', '.join(near)}?)"
                                                                      if near else ""),
                         help="`repro known` lists the entry ids.")
    entries = [c.get(entry_id)] if entry_id else c.entries
    if bundle is not None:
        d = open_bundle(bundle)
        analysis = analyze_bundle_dir(d, c)
        ev = gather(d, analysis)
        results = [known.check(e, ev) for e in entries if e is not None]
        results.sort(key=lambda m: (not m.matched, -m.score, m.entry.id))
        if as_json:
            click.echo(json.dumps({"schema": "repro.known-check", "version": 1, "bundle": str(bundle),
                                   "catalogue": known.catalogue_info(c),
                                   "results": [{**m.to_dict(), "is_match": m.matched, "why_not": m.why_not,
                                                "parts": [p.to_dict() for p in m.parts]} for m in results]},
                              indent=1))
        else:
            click.echo(_check_text(bundle, results, c, show_all or entry_id is not None))
        return 0
    if as_json:
        data = c.to_dict() if entry_id is None else entries[0].to_dict()  # type: ignore[union-attr]
        click.echo(json.dumps(data, indent=1))
        return 0
    if entry_id:
        click.echo(_entry_text(entries[0]))  # type: ignore[arg-type]
        return 0
    click.echo(f"{len(c.entries)} known problems (catalogue of {c.date}: {', '.join(p for p, _ in c.files)})\n")
    for e in sorted(c.entries, key=lambda e: cat.ORIGINS.index(e.origin)):  # upstream, repro's findings, injected
        refs = "injected by repro" if e.origin == "injected" else e.refs
        click.echo(f"{e.id:<46} {e.status:<10} {refs}")
        click.echo(f"{'':<46} {e.title}")
    click.echo("\n`repro known ID` shows an entry's rule, versions and workaround; `repro known --check BUNDLE` "
               "explains a bundle's match.")
    return 0
