"""Files written by an earlier repro still open: bundles, run directories, journals and scenarios.

The fixtures under tests/unit/data/formats/ were written by repro as it was on 2026-12-01 (record.py beside
them says how); traces/ holds two real bundles (directory and tarball) from 2026-11-28. A maintainer with a
newer repro must be able to read a bundle attached to an old issue, so every reader here opens them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from repro.bisect import driver
from repro.bisect.journal import Journal, read_steps
from repro.scenario import Scenario
from tests.helpers_cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "unit" / "data" / "formats"
BUNDLES = [DATA / "bundle", ROOT / "traces" / "scheduler-stall", ROOT / "traces" / "write-stall",
           ROOT / "traces" / "scheduler-stall.tar.gz", ROOT / "traces" / "write-stall.tar.gz"]
RUN_DIRS = [DATA / "stress", DATA / "watch", DATA / "bisect-sim"] + BUNDLES[:3]


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_analyze_opens_an_earlier_bundle_and_finds_its_verdict(bundle: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`repro analyze --json` of an earlier bundle (directory or tarball) gives an analysis of its processes."""
    code, out, err = run_cli(["analyze", "--json", str(bundle)], capsys)
    assert code == 0, err
    [a] = json.loads(out)
    assert a["processes"], a


@pytest.mark.parametrize("run", RUN_DIRS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_report_opens_an_earlier_run_directory(run: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`repro report` of an earlier stress, watch, bisect run directory or bundle writes its page."""
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    code, out, err = run_cli(["report", str(copy), "-o", str(tmp_path / "r.html")], capsys)
    assert code == 0, err
    assert "<html" in (tmp_path / "r.html").read_text().lower()


@pytest.mark.parametrize("run", [DATA / "stress", DATA / "bundle", ROOT / "traces" / "scheduler-stall"],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_issue_renders_from_an_earlier_run_directory_or_bundle(run: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`repro issue` of an earlier stress run directory or bundle writes ISSUE.md."""
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    code, out, err = run_cli(["issue", str(copy), "-o", str(tmp_path / "ISSUE.md")], capsys)
    assert code == 0, err
    text = (tmp_path / "ISSUE.md").read_text()
    assert text.startswith("#") and "{{" not in text


@pytest.mark.parametrize("path", [DATA / "scenario.json", DATA / "stress" / "scenario.json"],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_an_earlier_scenario_json_reads_back_as_the_scenario_it_was(path: Path) -> None:
    """scenario.json of an earlier repro (``schema_version`` 1, stress's informational keys) reads back."""
    scn = Scenario.read(path)
    assert scn.load.concurrency == 16 and scn.load.prompt_len == (16, 256) and scn.detect.window == 20.0


def test_an_earlier_real_bisect_journal_resumes_with_its_base_scenario(tmp_path: Path) -> None:
    """A real bisect's journal of an earlier repro resumes: its header's space, settings and base scenario."""
    run = tmp_path / "bisect-real"
    shutil.copytree(DATA / "bisect-real", run)
    jr, spec, recorded = driver.start_or_resume(run, None, True)
    assert spec.mode == "real" and (spec.space.lo, spec.space.hi) == (1, 8) and recorded == []
    scn = spec.base
    assert isinstance(scn, Scenario) and "scenario" not in spec.extra
    assert scn.server.inject == "stall-after=30" and scn.load.concurrency == 16


def test_an_earlier_simulated_bisect_journal_reads_its_steps() -> None:
    """A simulated bisect's journal of an earlier repro: header and every step are read."""
    j = Journal(DATA / "bisect-sim" / "journal.jsonl")
    assert j.header() is not None and j.header()["mode"] == "simulate"
    steps = read_steps(j)
    assert len(steps) == 10 and all(s.config for s in steps)


@pytest.mark.parametrize("command, run, rel", [
    ("analyze", DATA / "bundle", "manifest.json"),
    ("report", DATA / "bundle", "manifest.json"),
    ("report", DATA / "stress", "summary.json"),
    ("report", DATA / "watch", "watch.json"),
    ("issue", DATA / "stress", "scenario.json"),
], ids=lambda v: v if isinstance(v, str) else v.name)
def test_a_file_of_a_newer_repro_is_a_one_line_error_not_a_traceback(command: str, run: Path, rel: str,
                                                                     tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The same directory with one file stamped by a future version: exit 2 and one line naming the file."""
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    doc = json.loads((copy / rel).read_text())
    doc.pop("schema_version", None)
    schema = {"manifest.json": "repro.bundle", "summary.json": "repro.stress.summary",
              "watch.json": "repro.watch", "scenario.json": "repro.scenario"}[rel]
    (copy / rel).write_text(json.dumps({**doc, "schema": schema, "version": 99}))
    args = [command, str(copy)] + (["-o", str(tmp_path / "out")] if command != "analyze" else [])
    code, out, err = run_cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert rel in lines[0] and "newer than this repro" in lines[0], err
