"""`repro analyze BUNDLE [BUNDLE...]`: verdicts and signatures, bundles grouped by signature."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import click

from repro.analyze import catalogue as cat
from repro.analyze import known
from repro.bundle.reader import open_bundle
from repro.analyze.stacks import analyze_bundle_dir
from repro.commands.known import catalogue_option


@click.command("analyze")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the analyses as JSON.")
@click.option("--threads", is_flag=True, help="List every blocked/busy thread, not only the main ones.")
@catalogue_option
def command(bundles: tuple[Path, ...], as_json: bool, threads: bool, catalogues: tuple[Path, ...]) -> int:
    """Print the verdict of each bundle (directory or .tar.gz) and group them by stack signature.

    Verdicts: blocked (same frames, no CPU; or a CUDA wait, whose CPU is the driver's
    spin), busy (same frames, CPU spinning), progressing (stacks move through the outer
    loop), idle (EngineCore waits for requests: nothing to do). Bundles with the same
    signature stalled at the same point. Each bundle is matched against the catalogue of
    known vLLM hangs (`repro known`): the best match with its upstream link and workaround.
    """
    c = cat.load(list(catalogues))
    opened = [(b, open_bundle(b)) for b in bundles]  # all checked before any output
    results = []
    for given, d in opened:
        a = analyze_bundle_dir(d, c)
        results.append((str(given), a))
    if as_json:
        click.echo(json.dumps([{"bundle": b, **a} for b, a in results], indent=1))
        return 0
    groups: dict[str, list[str]] = defaultdict(list)
    for b, a in results:
        click.echo(f"{b}: {a.get('stuck_process') or '?'} {a['verdict']}"
                   + (f" in {a['stuck_frame']}" if a.get("stuck_frame") else "") + f"  [signature {a['signature']}]")
        for p in a["processes"]:
            for t in p["threads"]:
                if t["main"] or (threads and t["verdict"] in ("blocked", "busy")):
                    cpu = f"{t['cpu_seconds']}/{t['window_seconds']} s CPU" if t["cpu_seconds"] is not None else "no CPU data"
                    click.echo(f"    {p['label']:<12} {t['name'][:28]:<28} {t['verdict']:<11} {t['stuck_frame']}  ({cpu})")
                    if t.get("cuda_wait"):
                        click.echo(f"    {'':<12} {'':<28} {'':<11} in a CUDA wait: {t['cuda_wait']}")
        if a.get("verdict") in ("idle", "progressing") and a.get("verdict_reason") != "stacks":
            click.echo(f"    why {a['verdict']}: {a['verdict_reason']}")
        if (a.get("gpu") or {}).get("note"):
            click.echo(f"    gpu: {a['gpu']['note']}")
        for line in known.summary_lines(a):
            click.echo(f"    {line}")
        groups[str(a["signature"])].append(b)
    if len(results) > 1:
        click.echo("")
        click.echo(f"{len(groups)} distinct signature(s):")
        for sig, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            click.echo(f"  {sig}: {len(members)} bundle(s): {', '.join(members)}")
    return 0
