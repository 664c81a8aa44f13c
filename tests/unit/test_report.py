"""`repro report RUN_DIR`: what the page says for each kind of run, where it is written, and what it never does.

Contract: the status at the top says clean only for a clean run, with the exposure it adds
(hours at which concurrency); a stall run names the stall and where it began; a watch lists
its stalls and restarts; a bisect shows its decision path from journal.jsonl; a bundle (dir or
.tar.gz) its verdict. The page is self-contained (no script, nothing fetched: a CSP that forbids
it, images as data URIs). The default output is RUN_DIR/report.html + timeline.png; a bundle's
report goes beside it, never into it; -o picks the page's path. A directory that is no run is
one line and exit 2. At the end of a run, a report that cannot be drawn costs one line, never
the run's files.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from repro.errors import UsageError
from repro.report import default_output, report_after_run, timeline_path, write_report
from repro.report.sources import identify
from tests.helpers_report import simulated_bisect
from tests.helpers_cli import repro_inprocess

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data" / "report-runs"
TRACES = ROOT / "traces"


@pytest.fixture(scope="module")
def bisect_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulated_bisect(tmp_path_factory.mktemp("bisect"))


def status_of(html: str) -> tuple[str, str]:
    m = re.search(r'<div class="status (\w+)" id="status">([^<]*)</div>', html)
    assert m, "no status line"
    return m.group(1), m.group(2)


def assert_self_contained(html: str) -> None:
    assert "<script" not in html.lower()
    assert "default-src 'none'" in html  # the Content-Security-Policy: nothing may be fetched
    for attr in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert attr.startswith("data:"), attr
    assert 'name="repro-report" content="schema=repro.report; version=1' in html


def test_bisect_report_shows_the_decision_path_from_the_journal(bisect_run: Path, tmp_path: Path) -> None:
    res = write_report(bisect_run, tmp_path / "b.html")
    html = res.html.read_text()
    status, headline = status_of(html)
    minimal = json.loads((bisect_run / "minimal.json").read_text())
    assert headline.startswith(f"minimal configuration: {minimal['describe']}")
    steps = [json.loads(x) for x in (bisect_run / "journal.jsonl").read_text().splitlines()]
    for rec in steps:
        if rec["type"] == "step":
            assert f"<td>{rec['step']}</td><td>{rec['describe']}</td>" in html
        if rec["type"] == "decision":
            assert rec["text"].replace("&", "&amp;").replace(">", "&gt;").replace("<", "&lt;") in html
    assert res.timeline == tmp_path / "b.timeline.png" and res.timeline.stat().st_size > 10_000
    assert_self_contained(html)


@pytest.mark.parametrize("name", ["scheduler-stall", "write-stall"])
def test_bundle_dir_and_tarball_give_the_same_verdict_and_the_report_lands_beside_the_bundle(name: str,
                                                                                             tmp_path: Path) -> None:
    shutil.copytree(TRACES / name, tmp_path / name)
    shutil.copy(TRACES / f"{name}.tar.gz", tmp_path / f"{name}.tar.gz")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / name).rglob("*"))
    by_dir = write_report(tmp_path / name)
    by_tar = write_report(tmp_path / f"{name}.tar.gz")
    assert by_dir.html == by_tar.html == tmp_path / f"{name}.report.html"
    assert by_dir.timeline == tmp_path / f"{name}.timeline.png"
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / name).rglob("*")) == before  # never into the bundle
    analysis = json.loads((TRACES / name / "analysis.json").read_text())
    status, headline = status_of(by_tar.html.read_text())
    assert status == "stall" and headline == (f"{analysis['stuck_process']} {analysis['verdict']} in "
                                              f"{analysis['stuck_frame']}").replace("&", "&amp;")
    assert by_dir.report.headline == by_tar.report.headline
    html = by_dir.html.read_text()
    assert analysis["signature"] in html
    for t in analysis["stuck_threads"]:
        assert t["stuck_frame"] in html
    assert_self_contained(html)


def test_a_partial_stress_run_is_reported_without_saying_clean(tmp_path: Path) -> None:
    """A run killed before summary.json (the recorded storage-fill run has none) is reported from what it wrote."""
    shutil.copytree(Path(__file__).parent / "data" / "storage-fill", tmp_path / "run")
    res = write_report(tmp_path / "run")
    assert res.html == tmp_path / "run" / "report.html" and res.timeline == tmp_path / "run" / "timeline.png"
    status, headline = status_of(res.html.read_text())
    assert status == "info" and "did not finish" in headline and "clean" not in headline


def test_not_a_run_directory_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    for p in (tmp_path / "empty", tmp_path / "notes.txt", tmp_path / "missing"):
        with pytest.raises(UsageError) as e:
            identify(p)
        assert e.value.exit_code == 2 and "\n" not in e.value.message and str(p) in e.value.message
        assert "repro stress" in e.value.help


def run_cli(*args: str) -> tuple[int, str, str]:
    """repro.cli.main in-process, with its error handling (exit codes, one-line errors)."""
    r = repro_inprocess(*args)
    return r.returncode, r.stdout, r.stderr


def test_cli_writes_the_page_where_o_says_and_prints_the_headline(bisect_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "page.html"
    code, stdout, stderr = run_cli("report", str(bisect_run), "-o", str(out))
    assert code == 0, stderr
    assert out.is_file() and (tmp_path / "deep" / "page.timeline.png").is_file()
    assert stdout.splitlines()[0].startswith("minimal configuration:")
    assert f"report: {out}" in stdout
    code, stdout, stderr = run_cli("report", str(tmp_path / "nothing-here"))
    assert code == 2 and stderr.splitlines()[0] == f"error: {tmp_path / 'nothing-here'}: no such file or directory"
    assert "Traceback" not in stderr


def test_output_names() -> None:
    assert timeline_path(Path("/r/report.html")) == Path("/r/timeline.png")
    assert timeline_path(Path("/r/bundle-001.report.html")) == Path("/r/bundle-001.timeline.png")
    assert timeline_path(Path("/r/x.html")) == Path("/r/x.timeline.png")
    assert default_output(identify(TRACES / "write-stall")) == TRACES / "write-stall.report.html"


def test_a_report_that_cannot_be_drawn_costs_one_line_and_no_file_of_the_run(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN a finished run WHEN drawing its report fails THEN report_after_run says so in one line, raises
    nothing (the run's exit code stands) and leaves every file of the run as it was."""
    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "data" / "storage-fill", run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    def broken(rd: object) -> None:
        raise RuntimeError("no fonts")

    monkeypatch.setattr("repro.report.build_report", broken)
    said: list[str] = []
    assert report_after_run(run, said.append) is None
    assert len(said) == 1 and "\n" not in said[0] and "report: not written (RuntimeError: no fonts)" in said[0]
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


@pytest.mark.parametrize("run", ["stress-clean", "stress-stall"])
def test_requests_over_time_agree_with_the_summary_and_with_a_full_json_parse(run: str,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The binned requests.jsonl (read mostly without a JSON parse) counts what summary.json counts, and the same
    as parsing every line."""
    from repro.report import requests as rq

    d = DATA / run
    s = json.loads((d / "summary.json").read_text())
    since = (s.get("stall") or {}).get("since_s")
    fast = rq.bin_requests(d / "requests.jsonl", s["load_seconds"], since)
    assert fast.total == s["requests"]["total"] and sum(fast.ok) == s["requests"]["ok"]
    assert sum(fast.files_ok) == s["files"]["verified"] and sum(fast.files_bad) == s["files"]["bad"]
    assert sum(fast.files_not_written) == s["files"]["not_written_engine_stalled"]
    monkeypatch.setattr(rq, "_fast", lambda line: None)
    slow = rq.bin_requests(d / "requests.jsonl", s["load_seconds"], since)
    assert (fast.t, fast.ok, fast.failed, fast.p50, fast.p99, fast.files_ok, fast.files_not_written) == \
        (slow.t, slow.ok, slow.failed, slow.p50, slow.p99, slow.files_ok, slow.files_not_written)


def test_clean_stress_run_says_clean_with_its_exposure_at_the_top(tmp_path: Path) -> None:
    shutil.copytree(DATA / "stress-clean", tmp_path / "run")
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    res = write_report(tmp_path / "run")
    html = res.html.read_text()
    status, headline = status_of(html)
    h = s["exposure_seconds"] / 3600
    assert status == "clean" and headline == f"clean: {h:.2g} h at concurrency {s['fidelity']['concurrency']}"
    assert html.index('id="status"') < html.index("<h2>")  # the verdict comes before everything else
    assert "at 95% confidence the hang rate there is below" in html
    assert res.timeline == tmp_path / "run" / "timeline.png"
    assert_self_contained(html)


def test_stall_run_names_the_stall_and_counts_unwritten_files_apart(tmp_path: Path) -> None:
    shutil.copytree(DATA / "stress-stall", tmp_path / "run")
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    html = write_report(tmp_path / "run").html.read_text()
    status, headline = status_of(html)
    assert status == "stall" and headline.startswith(f"stall: {s['stall']['class']} after ")
    assert f"<dt>not written: engine stalled</dt><dd>{s['files']['not_written_engine_stalled']} " in html
    assert "<dt>bad</dt><dd>0</dd>" in html
    assert "<h2>Stall</h2>" in html and summary_reason(s) in html


def test_watch_report_lists_the_stall_and_the_restart(tmp_path: Path) -> None:
    shutil.copytree(DATA / "watch", tmp_path / "run")
    events = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    html = write_report(tmp_path / "run").html.read_text()
    status, headline = status_of(html)
    assert status == "stall" and headline.startswith("1 stall(s), 1 restart(s) in ")
    detect = next(e for e in events if e["event"] == "detect")
    assert f"<td>1</td><td>{detect['class']}</td>" in html and 'tr class="restart"' in html
    assert "<h2>Stalls and restarts</h2>" in html


def summary_reason(s: dict) -> str:
    import html

    return html.escape(s["stall"]["evidence"]["reasons"][0], quote=True)
