"""Lane on the `main` server: the fidelity breakdown at two concurrencies, then a verification run (every
hidden-state file verified, none bad, no HTTP 400 thanks to clipping to max_model_len).

It starts after the Python-level stall was captured (that capture needs the GPU to itself) and tells the
storm lanes when the fidelity measurements are done.
"""

from __future__ import annotations

import pytest

from tests.gpu.harness import mark, profile_from_env, wait_marker
from tests.gpu.helpers import file_dtype, run_repro, stress_args, summary

pytestmark = [pytest.mark.gpu]
SLOW = 1 if profile_from_env().gpu else 3
SAFETENSORS_DTYPE = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


@pytest.mark.parametrize("which", ["low", "high"])
@pytest.mark.timeout(420 * SLOW)
def test_fidelity_breakdown(which: str, ctx, gpu_server, step) -> None:  # type: ignore[no-untyped-def]
    srv = gpu_server("main")
    p = ctx.profile
    c, secs = p.fidelity[0 if which == "low" else 1]
    try:
        if which == "low":
            step.put(waited_for_python_stall_s=wait_marker(ctx, "python-stall-captured", 180 * SLOW))
        out = ctx.work / "runs" / f"fidelity-c{c}"
        ran = run_repro(ctx, stress_args(srv, out, "--concurrency", str(c), "--duration", f"{secs:g}s", "--prompt-len",
                                         p.prompt_len, "--startup-grace", "10", "--window", "60", storage=False),
                        out.with_suffix(".log"), timeout=secs + 150 * SLOW)
    finally:
        if which == "high":
            mark(ctx, "fidelity-done")
    s = summary(out)
    fid = s.get("fidelity") or {}
    bd = fid.get("breakdown") or {}
    step.row("fidelity breakdown", vllm=ctx.vllm_version, concurrency=c, seconds=secs,
             req_per_s=(s.get("throughput") or {}).get("requests_per_s"), client_in_flight=bd.get("client_in_flight"),
             engine_running=bd.get("engine_running"), engine_waiting=bd.get("engine_waiting"),
             api_server=bd.get("api_server"), api_server_share=(bd.get("shares") or {}).get("api_server"),
             fidelity_mean=fid.get("mean"), advice="yes" if fid.get("advice") else "no")
    step.put(exit=ran.rc, concurrency=c, samples=bd.get("samples"), advice=fid.get("advice"))
    step.artifact(out / "summary.json", f"fidelity-c{c}-summary.json")
    assert ran.rc == 0, f"stress exit {ran.rc}: {ran.tail()}"
    assert (bd.get("samples") or 0) >= 10, bd
    total = bd["engine_running"] + bd["engine_waiting"] + bd["api_server"] - bd["engine_excess"]
    assert abs(total - bd["client_in_flight"]) < 0.5, bd


@pytest.mark.timeout(400 * SLOW)
def test_every_file_verified_none_bad_and_no_http_400(ctx, gpu_server, step) -> None:  # type: ignore[no-untyped-def]
    srv = gpu_server("main")
    p = ctx.profile
    out = ctx.work / "runs" / "verify"
    ran = run_repro(ctx, stress_args(srv, out, "--concurrency", str(p.verify_concurrency), "--duration",
                                     f"{p.verify_seconds:g}s", "--prompt-len", p.prompt_len, "--startup-grace", "10",
                                     "--window", "90"),
                    out.with_suffix(".log"), timeout=p.verify_seconds + 200 * SLOW)
    s = summary(out)
    req, files, prompts = s.get("requests") or {}, s.get("files") or {}, s.get("prompts") or {}
    dtype = file_dtype(srv["url"], srv["model"])
    step.put(exit=ran.rc, concurrency=p.verify_concurrency, seconds=p.verify_seconds, ok=req.get("ok"),
             req_per_s=(s.get("throughput") or {}).get("requests_per_s"), files_verified=files.get("verified"),
             files_bad=files.get("bad"), unverifiable=files.get("unverifiable"), http_400=req.get("rejected"),
             errors=req.get("errors"), prompts_used=prompts.get("used"), max_model_len=prompts.get("max_model_len"),
             limit_from=prompts.get("source"), file_dtype=dtype, fidelity_mean=(s.get("fidelity") or {}).get("mean"))
    step.artifact(out / "summary.json", "verify-summary.json")
    assert ran.rc == 0, f"stress exit {ran.rc}: {s.get('error') or ran.tail()}"
    assert files.get("verified") == req.get("ok") and (req.get("ok") or 0) > 0, (files, req)
    assert files.get("bad") == 0 and req.get("rejected") == 0, (files, req)
    assert prompts.get("source") == "/v1/models" and prompts.get("used", [0, 0])[1] == p.max_model_len - 2, prompts
    assert dtype == SAFETENSORS_DTYPE[p.dtype], f"hidden states stored as {dtype}, model in {p.dtype}"
