"""Lane on the `hang` server (under `repro watch --serve --inject gpu-hang=Nsteps`): a GPU kernel that never
finishes blocks EngineCore in a CUDA wait while the API server answers; watch detects it, captures it
(native frames show the CUDA wait, context/gpu.json shows the GPU busy), stops the server, sees its GPU
memory freed and starts it again. On the CPU machine the hang is a scheduler stall (no CUDA) and the
CUDA-only checks are skipped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.gpu.harness import http_ok, profile_from_env, wait_marker
from tests.gpu.helpers import (end, events, gpu_readings, native_cuda_frames, start_repro, stress_args, wait_event,
                               wait_serving, write_control)

pytestmark = [pytest.mark.gpu]
SLOW = 1 if profile_from_env().gpu else 3


@pytest.mark.timeout(500 * SLOW)
def test_gpu_hang_is_captured_in_a_cuda_wait_and_watch_restarts_the_server(ctx, gpu_server, step) -> None:  # type: ignore[no-untyped-def]
    srv = gpu_server("hang")
    p = ctx.profile
    ev = Path(srv["events"])
    step.put(waited_for_python_stall_s=wait_marker(ctx, "python-stall-captured", 180 * SLOW))
    out = ctx.work / "runs" / "gpu-hang-load"
    load = start_repro(ctx, stress_args(srv, out, "--concurrency", "16", "--duration", "30m", "--request-timeout", "900",
                                        "--retries", "0", "--prompt-len", p.prompt_len, "--window", "1800",
                                        "--startup-grace", "1800", "--on-stall", "exit"), out.with_suffix(".log"))
    t_load = time.time()
    api_alive = None
    try:
        detect = wait_event(ev, "detect", p.hang_window + 150 * SLOW)
        if detect is not None:
            api_alive = http_ok(srv["url"] + "/health") and http_ok(srv["url"] + "/v1/models")
        capture = wait_event(ev, "capture", 240 * SLOW, after_seq=detect["seq"]) if detect else None
    finally:
        write_control(srv, "release")  # the restarted server must not hang again
        end(load)
    assert detect is not None, f"no stall detected: {[e.get('event') for e in events(ev)][-10:]}"
    stop = wait_event(ev, "stop", 120, after_seq=detect["seq"])
    freed = wait_event(ev, "gpu-free", 120, after_seq=detect["seq"])
    healthy = wait_event(ev, "healthy", p.startup_timeout, after_seq=detect["seq"])
    serving = wait_serving(srv, 60 * SLOW) if healthy else None
    injected = [e for e in events(Path(srv["watch_dir"]) / "injected.jsonl") if e.get("event") == "stall"]
    bundle = Path((capture or {}).get("dir") or "/nonexistent")
    analysis = json.loads((bundle / "analysis.json").read_text()) if (bundle / "analysis.json").is_file() else {}
    gpu = gpu_readings(bundle)
    # a *Synchronize frame, else the analysis's CUDA wait (0.26.0: a driver call under cuBLAS that never returns)
    frames = native_cuda_frames(bundle) or ([f"analysis: {analysis['cuda_wait']}"] if analysis.get("cuda_wait") else [])
    t_inj = injected[0]["t"] if injected else None
    timings = {"hang_after_load_s": round(t_inj - t_load, 1) if t_inj else None,
               "detected_after_hang_s": round(detect["t"] - t_inj, 1) if t_inj else None,
               "capture_s": (capture or {}).get("seconds"), "stop_s": (stop or {}).get("seconds"),
               "gpu_free_s": (freed or {}).get("seconds"),
               "restart_healthy_s": (healthy or {}).get("seconds")}
    used_before = sum(x or 0 for x in (stop or {}).get("gpu_memory_used_mib") or [])
    used_after = sum(x or 0 for x in (freed or {}).get("memory_used_mib_after") or [])
    step.row("gpu-hang under repro watch", vllm=ctx.vllm_version, **timings,
             gpu_held_mib_before=(freed or {}).get("held_mib_before"), gpu_held_mib_after=(freed or {}).get("held_mib_after"),
             gpu_used_mib_drop=round(used_before - used_after) if used_before and used_after else None)
    step.put(stall_class=detect.get("class"), api_answered_during_hang=api_alive, injected=bool(injected),
             injected_kind=injected[0].get("kind") if injected else None, capture=(capture or {}).get("status"),
             verdict=analysis.get("verdict"), stuck_frame=analysis.get("stuck_frame"), cuda_frames=len(frames),
             cuda_frame=frames[0] if frames else None, gpu_free=(freed or {}).get("status"),
             serving_after_restart=serving is not None,
             **({f"gpu_{k}": v for k, v in gpu.items()} if gpu else {}))
    if capture and capture.get("tarball"):
        step.artifact(Path(capture["tarball"]), "gpu-hang-bundle.tar.gz")
    step.artifact(ev, "watch-events.jsonl")
    assert detect.get("class") == "engine-stall", detect
    assert api_alive, "the API server did not answer /health and /v1/models during the hang"
    assert capture is not None and capture.get("status") == "done", capture
    assert injected and injected[0].get("kind") == ("gpu-hang" if ctx.gpu else "stall-after"), injected
    if ctx.gpu:
        assert frames, "no CUDA wait in EngineCore's --native frames"
        assert gpu is not None and gpu["samples"] >= 2 and (gpu["util_median"] or 0) >= 80, f"GPU not busy: {gpu}"
        assert freed is not None and freed.get("status") == "released", freed
        by_pid = (freed.get("held_mib_before") or 0) > 0 and freed.get("held_mib_after") == 0
        by_device = used_before - used_after >= 2000  # the hung server held 8 GiB of KV cache alone
        assert by_pid or by_device, f"GPU memory not seen freed: stop {stop}, gpu-free {freed}"
    else:
        assert "repro_injected_scheduler_stall" in json.dumps(analysis), analysis.get("stuck_frame")
    assert stop is not None and healthy is not None, f"watch did not restart the server: {stop} {healthy}"
    assert serving is not None, "the restarted server does not serve"
