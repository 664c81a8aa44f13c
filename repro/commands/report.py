"""`repro report RUN_DIR`: one self-contained HTML page plus timeline.png for a run directory or a bundle."""

from __future__ import annotations

from pathlib import Path

import click

from repro.errors import EXIT_OK


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", default=None, metavar="FILE.html", type=click.Path(path_type=Path),
              help="Where to write the page. Default: RUN_DIR/report.html; for a bundle, beside it "
                   "(bundle-001.report.html). timeline.png goes beside the page (NAME.timeline.png unless the "
                   "page is report.html).")
def command(run_dir: Path, output: Path | None) -> int:
    """Write an HTML report of a stress, watch or bisect run directory, or of a bundle (dir or .tar.gz).

    One page that opens in any browser without a network: the verdict at the top (a clean run
    says so with the exposure it adds: hours at which concurrency), throughput, server
    running/waiting against the configured concurrency, latency percentiles over time, errors
    and aborts, hidden-state files verified, the store's use and orphans, detector states and
    the stall, restarts (watch), the decision path (bisect), stuck threads (bundle). Plots are
    embedded; timeline.png is also written beside the page. stress and watch write this report
    themselves when they end.

    \b
      repro report repro-runs/stress-20261128-120000
      repro report repro-runs/watch-20261128-120000 -o /tmp/watch.html
      repro report bundle-001.tar.gz
    """
    from repro.report import write_report

    res = write_report(run_dir, output)
    click.echo(f"{res.report.headline}")
    click.echo(f"report: {res.html}" + (f" (timeline: {res.timeline})" if res.timeline else ""))
    return EXIT_OK
