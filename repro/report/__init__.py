"""`repro report`: one self-contained HTML page and timeline.png for any run directory or bundle.

Reporters are kept apart from collection: this package only reads what stress, watch, bisect and
capture wrote (:mod:`repro.report.sources`), builds a :class:`~repro.report.model.Report` per kind
of run, and renders it (:mod:`repro.report.html`). ``write_report`` is what the command and the
end of every stress and watch run call; ``report_after_run`` wraps it so that a report that cannot
be drawn costs one line, never the run's other outputs or its exit code.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from repro.report.model import Report
from repro.report.sources import BISECT, BUNDLE, STRESS, WATCH, RunDir, identify

REPORT_NAME = "report.html"
TIMELINE_NAME = "timeline.png"


@dataclass
class ReportResult:
    html: Path
    timeline: Path | None  # None: nothing to plot
    report: Report


def build_report(rd: RunDir) -> Report:
    if rd.kind == STRESS:
        from repro.report.stress import build
    elif rd.kind == WATCH:
        from repro.report.watch import build
    elif rd.kind == BISECT:
        from repro.report.bisect import build
    elif rd.kind == BUNDLE:
        from repro.report.bundle import build
    else:  # pragma: no cover - identify() returns only these
        raise ValueError(rd.kind)
    return build(rd)


def default_output(rd: RunDir) -> Path:
    """RUN_DIR/report.html; a bundle's report goes beside it (bundle-001.report.html), never into it."""
    if rd.kind == BUNDLE:
        src = rd.tarball or rd.given
        stem = src.name[: -len(".tar.gz")] if src.name.endswith(".tar.gz") else src.name
        return src.resolve().parent / f"{stem}.report.html"
    return rd.given / REPORT_NAME


def timeline_path(html: Path) -> Path:
    """timeline.png beside report.html; beside NAME.report.html or NAME.html it is NAME.timeline.png."""
    if html.name == REPORT_NAME:
        return html.with_name(TIMELINE_NAME)
    stem = html.name[: -len(".html")] if html.name.endswith(".html") else html.name
    stem = stem[: -len(".report")] if stem.endswith(".report") else stem
    return html.with_name(f"{stem}.timeline.png")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write beside ``path`` and rename: a reader never sees half a page (the umask applies as to any file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_report(path: str | Path, out: str | Path | None = None) -> ReportResult:
    """Report on ``path`` (run directory, bundle directory or bundle tarball) into ``out`` (an .html path;
    default :func:`default_output`), with timeline.png beside it. Raises UsageError for what is not a run."""
    scratch = Path(tempfile.mkdtemp(prefix="repro-report-"))
    try:
        rd = identify(path, scratch)
        report = build_report(rd)
        from repro.report.html import render

        html_path = Path(out).expanduser() if out else default_output(rd)
        html_path.parent.mkdir(parents=True, exist_ok=True)
        png_path = None
        if report.timeline_png:
            png_path = timeline_path(html_path)
            _write_atomic(png_path, report.timeline_png)
        _write_atomic(html_path, render(report).encode("utf-8"))
        return ReportResult(html_path, png_path, report)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def report_after_run(run_dir: Path, say: Callable[[str], None]) -> ReportResult | None:
    """The report at the end of a stress or watch run: written, or one line saying why not (never raises)."""
    try:
        return write_report(run_dir)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - a plot must not cost the run
        say(f"report: not written ({type(exc).__name__}: {exc}); the run's other files are in {run_dir}, "
            f"and `repro report {run_dir}` tries again")
        return None
