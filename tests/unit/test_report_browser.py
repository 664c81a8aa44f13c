"""`repro report` pages open in a real browser: Chromium headless (Debian's package), from file://.

Contract: for a stress run (clean and stalled), a watch run with a restart, a bisect run and each
bundle in traces/ (directory and .tar.gz), the page loads without a single console message (no
script error, nothing blocked by its Content-Security-Policy, nothing fetched), the screenshot
shows the plots (the pixels of the embedded figures' line colours are on screen), and
timeline.png is a drawn plot, not an empty or broken file. The run directories are real runs
recorded under tests/unit/data/report-runs/ (see record.sh there) and a simulated bisect made
here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from repro.report import write_report
from tests.helpers_report import assert_page_shows_its_plots, simulated_bisect

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data" / "report-runs"
RUNS = {
    "stress-clean": DATA / "stress-clean",
    "stress-stall": DATA / "stress-stall",
    "watch-restart": DATA / "watch",
    "bundle-scheduler-stall-dir": ROOT / "traces" / "scheduler-stall",
    "bundle-scheduler-stall-tar": ROOT / "traces" / "scheduler-stall.tar.gz",
    "bundle-write-stall-dir": ROOT / "traces" / "write-stall",
    "bundle-write-stall-tar": ROOT / "traces" / "write-stall.tar.gz",
}


@pytest.fixture(scope="module")
def bisect_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulated_bisect(tmp_path_factory.mktemp("bisect"))


def _check_in_browser(run: Path, tmp_path: Path) -> None:
    res = write_report(run, tmp_path / "out" / "report.html")
    assert res.timeline is not None and res.timeline.name == "timeline.png"
    assert_page_shows_its_plots(res.html, res.timeline, tmp_path)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_report_opens_in_chromium_without_errors_and_shows_its_plots(name: str, tmp_path: Path) -> None:
    _check_in_browser(RUNS[name], tmp_path)


def test_bisect_report_opens_in_chromium_without_errors_and_shows_its_plots(bisect_run: Path, tmp_path: Path) -> None:
    _check_in_browser(bisect_run, tmp_path)
