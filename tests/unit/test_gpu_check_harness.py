"""The GPU check's bookkeeping, without a GPU: what `run` makes of the lanes' reports.

Contract: every test of every lane becomes one step of results.json with its outcome, seconds, message,
figures and table rows; a lane without a junit report (stopped at the budget) still shows its recorded
steps as errors; results.md has the steps table and one table per named table; OUT gets exactly the
tarball and the Markdown file, the tarball under 15 MiB even when the artifacts are larger (the largest
non-JSON files are dropped and listed); the exit code is 1 when a step failed.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

from tests.gpu import harness
from tests.gpu.harness import Context, collect, pack, step_file

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.gpu.test_verify_and_fidelity" name="test_fidelity_breakdown[low]" time="61.2"/>
<testcase classname="tests.gpu.test_verify_and_fidelity" name="test_every_file_verified_none_bad_and_no_http_400"
 time="130.0"><failure message="AssertionError: files bad 3">trace</failure></testcase>
</testsuite></testsuites>"""


def _ctx(tmp_path: Path) -> Context:
    ctx = Context(label="0.20.2", gpu=True, work=tmp_path / "work", storage_root=tmp_path / "hs", vllm_version="0.20.2",
                  model="/tmp/model-1024x8-bfloat16", machine={"gpus": ["NVIDIA H200, 570.1, 143771 MiB"], "cpus": 16},
                  servers={"main": {"name": "main", "purpose": "verify", "status": "ready", "ready_s": 52.1,
                                    "dir": str(tmp_path / "work" / "servers" / "main")}})
    for d in (ctx.results / "steps", ctx.artifacts, Path(ctx.servers["main"]["dir"])):
        d.mkdir(parents=True, exist_ok=True)
    ctx.save()
    return ctx


def test_steps_tables_and_the_two_output_files(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    (ctx.results / "junit-verify_and_fidelity.xml").write_text(JUNIT)
    step_file(ctx, "verify_and_fidelity", "test_fidelity_breakdown[low]").write_text(json.dumps(
        {"figures": {"exit": 0, "concurrency": 32},
         "tables": {"fidelity breakdown": [{"concurrency": 32, "api_server": 15.4, "engine_running": 8.1}]}}))
    step_file(ctx, "gpu_hang", "test_gpu_hang_x").write_text(json.dumps({"figures": {"capture": "done"}, "tables": {}}))
    (Path(ctx.servers["main"]["dir"]) / "server.log").write_text("INFO ready\n" * 10)
    res = collect(ctx)
    by = {s["name"]: s for s in res["steps"]}
    assert by["test_fidelity_breakdown[low]"]["outcome"] == "passed" and by["test_fidelity_breakdown[low]"]["seconds"] == 61.2
    assert by["test_every_file_verified_none_bad_and_no_http_400"]["outcome"] == "failed"
    assert "files bad 3" in by["test_every_file_verified_none_bad_and_no_http_400"]["message"]
    assert by["test_gpu_hang_x"]["outcome"] == "error" and "budget" in by["test_gpu_hang_x"]["message"]
    assert res["schema"] == "repro.gpu-check" and res["failed"] >= 2
    md = (ctx.results / "results.md").read_text()
    assert "### fidelity breakdown" in md and "| 32 | 15.4 | 8.1 |" in md and "NVIDIA H200" in md
    out = tmp_path / "out"
    assert pack(ctx, res, out) == 1
    assert sorted(os.listdir(out)) == ["gpu-check-0.20.2.md", "gpu-check-0.20.2.tar.gz"]
    with tarfile.open(out / "gpu-check-0.20.2.tar.gz") as tf:
        names = tf.getnames()
    assert "gpu-check-0.20.2/results/results.json" in names
    assert "gpu-check-0.20.2/server-logs/main/server.log" in names


def test_the_tarball_is_cut_to_fit(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ctx = _ctx(tmp_path)
    monkeypatch.setattr(harness, "OUT_LIMIT", 2_000_000)
    (ctx.artifacts / "lane").mkdir()
    (ctx.artifacts / "lane" / "big-bundle.tar.gz").write_bytes(os.urandom(3_000_000))
    (ctx.artifacts / "lane" / "summary.json").write_text("{}")
    res = collect(ctx)
    pack(ctx, res, tmp_path / "out")
    tar = tmp_path / "out" / "gpu-check-0.20.2.tar.gz"
    assert tar.stat().st_size <= 2_000_000
    with tarfile.open(tar) as tf:
        names = tf.getnames()
        dropped = tf.extractfile("gpu-check-0.20.2/results/dropped-to-fit.txt").read().decode()  # type: ignore[union-attr]
    assert "artifacts/lane/big-bundle.tar.gz" in dropped and "gpu-check-0.20.2/artifacts/lane/summary.json" in names
