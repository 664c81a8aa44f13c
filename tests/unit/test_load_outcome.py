"""What a stress run reports about its own output and limits (against benchmarks/fast_endpoint.py).

Contract:
- a run whose hidden-state files fail their check or cannot be verified is not clean: outcome
  ``files-bad``, exit code 4 (also from the CLI), a line on the display at once, and summary.json
  counts them (``failed_check`` vs ``unverifiable``);
- failing files leave the store and are kept in RUN_DIR/bad-files for inspection up to --keep-bad
  bytes, the rest deleted and counted;
- synthetic prompt lengths are clipped to the served model's max_model_len (from /v1/models) with one
  line saying so, so that no request is refused for its length;
- HTTP 400s (prompts the client cannot clip) are counted apart from errors, as ``rejected``;
- the fidelity breakdown splits the client's in-flight requests into engine running / waiting / inside
  the API server, and gives its advice when the API server holds a large share.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from repro.cli import main
from repro.load.display import Progress
from repro.load.runner import run_stress
from tests.helpers_endpoint import endpoint_factory  # noqa: F401  (fixture)
from tests.helpers_endpoint import stress_scenario


def _events(run: Path, kind: str) -> list[dict]:
    return [e for e in (json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()) if e["event"] == kind]


def test_unreadable_files_make_the_run_not_clean_and_are_kept(endpoint_factory, tmp_path: Path) -> None:
    """GIVEN a server whose every file is unreadable WHEN 40 requests run THEN exit 4 / files-bad, 40
    unverifiable files moved to RUN_DIR/bad-files (nothing left in the store), one display line at once."""
    ep = endpoint_factory(bad_files="garbage")
    run, out = tmp_path / "run", io.StringIO()
    res = run_stress(stress_scenario(ep.url, requests=40), run, progress=Progress(tty=False, stream=out))
    assert res.exit_code == 4 and res.outcome == "files-bad"
    assert "40 of 40 hidden-state files" in (res.error or "")
    s = json.loads((run / "summary.json").read_text())
    assert s["exit_code"] == 4 and s["outcome"] == "files-bad"
    f = s["files"]
    assert f["verified"] == 0 and f["bad"] == 40 and f["unverifiable"] == 40 and f["failed_check"] == 0
    assert f["kept_for_inspection"]["files"] == 40 and f["kept_for_inspection"]["deleted_over_budget"] == 0
    kept = sorted(os.listdir(run / "bad-files"))
    assert len(kept) == 40 and all(n.endswith(".safetensors") for n in kept)
    assert os.listdir(tmp_path / "store") == []
    lines = [ln for ln in out.getvalue().splitlines() if "failed its check" in ln]
    assert len(lines) == 1 and "unreadable" in lines[0] and "not be reported clean" in lines[0]
    assert [e["error"] for e in _events(run, "file-bad")] == ["unreadable"]


def test_wrong_token_ids_are_a_failed_check(endpoint_factory, tmp_path: Path) -> None:
    ep = endpoint_factory(bad_files="tokens")
    res = run_stress(stress_scenario(ep.url, requests=20), tmp_path / "run")
    assert res.exit_code == 4
    assert res.files["failed_check"] == 20 and res.files["unverifiable"] == 0
    assert res.files["errors"] == {"bad-tokens": 20}


def test_the_keep_budget_bounds_what_is_kept_and_counts_the_rest(endpoint_factory, tmp_path: Path) -> None:
    """Each unreadable file is 64 bytes: a 150-byte budget keeps 2 and deletes the other 18; 0 keeps none."""
    ep = endpoint_factory(bad_files="garbage")
    res = run_stress(stress_scenario(ep.url, requests=20, keep_bad_budget=150), tmp_path / "run")
    kept = res.files["kept_for_inspection"]
    assert (kept["files"], kept["bytes"], kept["deleted_over_budget"]) == (2, 128, 18)
    assert len(os.listdir(tmp_path / "run" / "bad-files")) == 2 and os.listdir(tmp_path / "store") == []
    res0 = run_stress(stress_scenario(ep.url, requests=10, keep_bad_budget=0), tmp_path / "run0")
    assert res0.exit_code == 4 and res0.files["kept_for_inspection"]["files"] == 0
    assert not (tmp_path / "run0" / "bad-files").exists()


def _cli(command: str, url: str, out: Path) -> int:
    with pytest.raises(SystemExit) as ei:
        main([command, "--url", url, "--requests", "10", "--concurrency", "2", "--prompt-len", "8-16",
              "--vocab-size", "200", "--startup-grace", "0", "--out", str(out)])
    return int(ei.value.code or 0)


def test_the_cli_exits_4_when_files_are_unverifiable(endpoint_factory, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ep = endpoint_factory(bad_files="garbage")
    assert _cli("stress", ep.url, tmp_path / "r") == 4
    err = capsys.readouterr().err
    assert "files-bad:" in err and "error: 10 of 10 hidden-state files" in err


def test_prompt_lengths_are_clipped_to_max_model_len(endpoint_factory, tmp_path: Path) -> None:
    """max_model_len 64 in /v1/models, --prompt-len 16-200, max_tokens 1: prompts 16-62 tokens (one generated
    token, one speculative), one line saying so, and no request refused."""
    ep = endpoint_factory(max_model_len=64)
    run, out = tmp_path / "run", io.StringIO()
    res = run_stress(stress_scenario(ep.url, requests=200, prompt_len=(16, 200)), run,
                     progress=Progress(tty=False, stream=out))
    assert res.exit_code == 0 and res.counts["ok"] == 200 and res.counts["rejected"] == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["prompts"]["used"] == [16, 62] and s["prompts"]["asked"] == [16, 200]
    assert s["prompts"]["max_model_len"] == 64 and s["prompts"]["source"] == "/v1/models"
    lines = [ln for ln in out.getvalue().splitlines() if "prompt lengths clipped" in ln]
    assert lines == ["prompt lengths clipped to 16-62 tokens (asked 16-200): the server's max_model_len is 64 "
                     "(from /v1/models) and each request needs 2 more token(s)"]
    lens = [json.loads(x)["prompt_tokens"] for x in (run / "requests.jsonl").read_text().splitlines()]
    assert max(lens) <= 62 and len(_events(run, "prompt-clip")) == 1


def test_a_range_within_the_limit_is_not_clipped_and_says_nothing(endpoint_factory, tmp_path: Path) -> None:
    ep = endpoint_factory(max_model_len=4096)
    out = io.StringIO()
    res = run_stress(stress_scenario(ep.url, requests=20), tmp_path / "run", progress=Progress(tty=False, stream=out))
    assert res.summary["prompts"]["clipped"] is False and "clipped" not in out.getvalue()


def test_http_400_is_counted_apart_from_errors(endpoint_factory, tmp_path: Path) -> None:
    """Text prompts cannot be clipped by the client: the long ones get HTTP 400, counted as rejected (with the
    server's message), not as failed; the short ones succeed and the run goes on."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": "x" * n}) + "\n" for n in (10, 100)))
    ep = endpoint_factory(max_model_len=64)
    res = run_stress(stress_scenario(ep.url, requests=40, prompts_file=str(prompts)), tmp_path / "run")
    c = res.counts
    assert c["ok"] == 20 and c["rejected"] == 20 and c["failed"] == 0 and c["errors"] == {"http-400": 20}
    assert "maximum context length is 64" in c["rejected_detail"]
    assert res.exit_code == 0


def test_file_token_prompts_are_cut_to_the_limit(endpoint_factory, tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt_token_ids": list(range(5, 105))}) + "\n")
    ep = endpoint_factory(max_model_len=64)
    out = io.StringIO()
    res = run_stress(stress_scenario(ep.url, requests=10, prompts_file=str(prompts)), tmp_path / "run",
                     progress=Progress(tty=False, stream=out))
    assert res.counts["ok"] == 10 and res.counts["rejected"] == 0
    assert res.summary["prompts"]["file_prompts_truncated"] >= 10  # counted as prepared (the feed runs ahead)
    assert f"token-id prompts of {prompts} longer than 62 tokens are cut to 62 (the longest has 100)" in out.getvalue()


def test_breakdown_shows_requests_held_inside_the_api_server(endpoint_factory, tmp_path: Path) -> None:
    """The engine reports only half of what the server holds as running (engine_share 0.5): the breakdown puts
    the other half inside the API server, and the advice names --api-server-count."""
    ep = endpoint_factory(latency=0.2, engine_share=0.5)
    sc = stress_scenario(ep.url, requests=None, duration=6.0, concurrency=16)
    sc.detect.poll_interval = 0.25
    res = run_stress(sc, tmp_path / "run")
    fid = res.summary["fidelity"]
    bd = fid["breakdown"]
    assert bd["samples"] >= 5
    assert bd["api_server"] >= 4 and bd["engine_running"] <= 10 and bd["engine_waiting"] == 0
    assert abs(bd["client_in_flight"] - bd["engine_running"] - bd["api_server"]) < 1.0
    assert "--api-server-count" in (fid["advice"] or "")


def test_no_advice_when_the_engine_holds_the_load(endpoint_factory, tmp_path: Path) -> None:
    ep = endpoint_factory(latency=0.2)
    sc = stress_scenario(ep.url, requests=None, duration=4.0, concurrency=16)
    sc.detect.poll_interval = 0.25
    res = run_stress(sc, tmp_path / "run")
    assert res.summary["fidelity"]["advice"] is None
    assert res.summary["fidelity"]["breakdown"]["api_server"] < 4


def test_repro_trial_reads_unverified_files_as_could_not_test(endpoint_factory, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """git bisect run reads every exit 1-127 but 125 as 'bad': files that fail their check are 125 (skip)."""
    ep = endpoint_factory(bad_files="garbage")
    assert _cli("trial", ep.url, tmp_path / "r") == 125 and "trial: exit 125" in capsys.readouterr().err


def test_a_run_in_which_no_request_completes_is_not_clean(endpoint_factory, tmp_path: Path) -> None:
    """GIVEN a client timeout far shorter than the server's latency WHEN every request times out THEN the run
    is not clean: outcome no-work, exit 4, and the one line names the timeout to raise."""
    ep = endpoint_factory(latency=2.0)
    res = run_stress(stress_scenario(ep.url, requests=16, request_timeout=0.05, retries=0), tmp_path / "run")
    assert res.exit_code == 4 and res.outcome == "no-work", (res.outcome, res.error)
    assert "none of 16 requests completed (16 timed out on the client" in (res.error or "")
    assert "--request-timeout of 0.05 s" in (res.error or "")
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["outcome"] == "no-work" and s["requests"]["ok"] == 0


def test_one_completed_request_among_timeouts_keeps_the_run_clean(endpoint_factory, tmp_path: Path) -> None:
    """A storm of client timeouts with some requests answered is a warning, not a failed run."""
    ep = endpoint_factory(latency=0.0)
    res = run_stress(stress_scenario(ep.url, requests=16, request_timeout=5.0, retries=0), tmp_path / "run")
    assert res.exit_code == 0 and res.outcome == "clean"
