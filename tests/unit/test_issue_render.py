"""ISSUE.md from the example bundles in traces/: vLLM's two required sections, collapsed details, fenced
stacks (EngineCore first), the signature, and a template the user can edit."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pytest

from repro.analyze.issue import _fence, find_template, render, render_issue
from repro.cli import main
from tests.helpers_issue import check_report, fences_balanced, stdout_is_a_terminal

TRACES = Path(__file__).resolve().parents[2] / "traces"
BUNDLES = ["scheduler-stall", "write-stall"]


@pytest.mark.parametrize("name", BUNDLES)
def test_issue_has_vllms_required_sections_and_stays_readable(name: str) -> None:
    md = render_issue(TRACES / name, find_template())
    first = md.splitlines()[0]
    assert first.startswith("# [Bug]: ")
    assert "### Your current environment" in md and "### 🐛 Describe the bug" in md
    env = md.split("### Your current environment", 1)[1].split("### 🐛 Describe the bug", 1)[0]
    assert "<details>" in env and "</details>" in env and "vLLM Version" in env
    bug = md.split("### 🐛 Describe the bug", 1)[1]
    assert "vllm serve" in bug and "```bash" in bug
    assert md.count("<details>") == md.count("</details>") >= 4
    assert fences_balanced(md)
    assert "{{" not in md and "<!--" not in md
    check_report(md)
    assert bug.index("EngineCore (pid") < bug.index("Worker (pid") < bug.index("APIServer (pid")
    assert re.search(r"#### Stack signature\n\n`[0-9a-f]{12}`", md)
    assert f"`{name}.tar.gz`" in md and "Last stats line before the engine went quiet: " in md


def test_issue_titles_name_the_hang_point() -> None:
    sched = render_issue(TRACES / "scheduler-stall", find_template()).splitlines()[0]
    write = render_issue(TRACES / "write-stall", find_template()).splitlines()[0]
    assert "repro_injected_scheduler_stall" in sched
    assert "Worker blocked in repro_injected_write_stall" in write


def test_an_edited_template_is_used(tmp_path: Path) -> None:
    tpl = tmp_path / "ISSUE_TEMPLATE.md"
    tpl.write_text("title: hang {{ signature }}\n\n### Your current environment\n{{ vllm_version }}\n")
    md = render_issue(TRACES / "scheduler-stall", tpl)
    assert re.match(r"# \[Bug\]: hang [0-9a-f]{12}\n", md)
    assert "0.32.0" in md


def test_fence_survives_backticks_in_the_text() -> None:
    block = _fence("a\n```\nb")
    assert block.startswith("````text\n") and block.endswith("\n````")
    assert render("title: x {{ signature }}", {"signature": "y"}) == "# [Bug]: x y\n"


def test_repro_issue_on_a_tarball_writes_issue_md_beside_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    tar = tmp_path / "write-stall.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(TRACES / "write-stall", arcname="write-stall")
    with pytest.raises(SystemExit) as ei, stdout_is_a_terminal():
        main(["issue", str(tar)])
    assert ei.value.code == 0
    out = tmp_path / "write-stall.ISSUE.md"
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_text().startswith("# [Bug]: ")


def test_a_bisect_run_adds_its_minimal_reproducer_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bisect = tmp_path / "bisect"
    bisect.mkdir()
    (bisect / "ISSUE_bisect.md").write_text("### Minimal reproducer (repro bisect)\n\nconcurrency 4, 1.2 hangs/h\n")
    out = tmp_path / "ISSUE.md"
    with pytest.raises(SystemExit) as ei:
        main(["issue", str(TRACES / "scheduler-stall"), "--bisect", str(bisect), "--out", str(out)])
    assert ei.value.code == 0
    md = out.read_text()
    assert "### 🐛 Describe the bug" in md and "concurrency 4, 1.2 hangs/h" in md.split("#### What was observed")[0]
    assert "No minimal configuration yet" not in md
    assert fences_balanced(md)


def test_bisect_dir_without_its_section_is_one_usage_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["issue", str(TRACES / "scheduler-stall"), "--bisect", str(tmp_path), "--out", str(tmp_path / "x.md")])
    assert ei.value.code == 2
    assert "no ISSUE_bisect.md" in capsys.readouterr().err
