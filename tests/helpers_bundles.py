"""Build a repro bundle directory from a short description: the stacks as py-spy prints them, plus context.

Fixtures of the known-hang catalogue (tests/unit/data/known/*.toml) are written this way, so that each one
holds the stack an upstream thread quotes, as text, rather than a hand-made JSON dump. A description::

    source = "where the stack comes from"
    expect = ["entry-id"]              # the entries it must match, and no other
    vllm_version = "0.27.1"
    server_command = "vllm serve ..."  # a shell line
    server_env = {NAME = "value"}
    log = "..."                        # server.log.tail (stats lines go to stats-lines.txt too)
    collect_env = "..."
    metrics = [{running = 4, waiting = 0, tokens = 1000, preemptions = 0, kv_cache = 0.2}, ...]  # per sample
    gpu = {name = "NVIDIA H200", util = [100, 100, 100], power_w = 125.0}
    context = {"detection.json" = {...}, "events.jsonl" = [{...}], "storage.json" = {...}}
    copy_context = "tests/unit/data/storage-fill"    # files copied into context/ first

    [[process]]
    role = "engine_core"               # label/pid/title default from the role
    cpu = "spin"                       # spin: the main thread uses a core; idle: no CPU between samples
    native = true                      # write sample-K.native.txt (default: when the dump has native frames)
    dump = '''Thread 101 (active): "MainThread"
        cuEventSynchronize (libcuda.so.1)
        Event.synchronize (torch/cuda/streams.py:254)
        ...'''                         # the same every sample, or dumps = ['''...''', '''...'''] one per sample
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from repro.analyze.native import parse_dump

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
ROLE_DEFAULTS = {"engine_core": ("EngineCore", 101, "VLLM::EngineCore"), "worker": ("Worker", 201, "VLLM::Worker"),
                 "api_server": ("APIServer", 11, "VLLM::APIServer"), "launcher": ("vllm", 10, "vllm serve")}
T0 = 1_800_000_000.0
INTERVAL = 2.0


def load_description(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def _metric_rows(rows: list[dict[str, float]]) -> str:
    out = []
    for i, r in enumerate(rows):
        m = {"t": T0 + i * INTERVAL, "vllm:num_requests_running": float(r.get("running", 0)),
             "vllm:num_requests_waiting": float(r.get("waiting", 0)),
             "vllm:kv_cache_usage_perc": float(r.get("kv_cache", 0.0)),
             "vllm:num_preemptions_total": float(r.get("preemptions", 0)),
             "vllm:prompt_tokens_total": 0.0, "vllm:generation_tokens_total": float(r.get("tokens", 0)),
             "vllm:request_success_total": float(r.get("requests", 0))}
        out.append(json.dumps(m) + "\n")
    return "".join(out)


def _gpu_json(g: dict[str, Any], pids: list[int]) -> dict[str, Any]:
    util = g.get("util") or [100.0]

    def reading(u: float) -> dict[str, Any]:
        return {"index": 0, "name": g.get("name", "NVIDIA H200"), "uuid": "GPU-0", "utilization_pct": float(u),
                "memory_used_mib": 72000.0, "memory_total_mib": 143771.0, "power_w": float(g.get("power_w", 125.0)),
                "temperature_c": 40.0}

    return {"schema": "repro.gpu", "version": 1, "taken_at": "2026-12-01T00:00:00Z", "gpus": [reading(util[0])],
            "processes": [{"pid": p, "gpu_index": 0, "used_memory_mib": 70000.0} for p in pids],
            "xid": list(g.get("xid") or []),
            "samples": [{"t": i * INTERVAL, "gpus": [reading(u)]} for i, u in enumerate(util[1:])]}


def build_bundle(desc: dict[str, Any], dest: Path) -> Path:
    """Write the bundle `desc` describes into `dest` (created) and return it."""
    dest.mkdir(parents=True)
    ctx = dest / "context"
    ctx.mkdir()
    if desc.get("copy_context"):
        for f in (ROOT / desc["copy_context"]).iterdir():
            if f.is_file():
                shutil.copy(f, ctx / f.name)
    cmd = shlex.split(desc.get("server_command", "vllm serve /models/m"))
    (dest / "manifest.json").write_text(json.dumps({
        "schema_version": 1, "kind": "repro-bundle", "name": dest.name, "repro_version": "0.1.0",
        "vllm_version": desc.get("vllm_version"), "created": "2026-12-01T00:00:00Z", "reason": "manual",
        "server_command": cmd}))
    (ctx / "server-command.txt").write_text(" ".join(cmd) + "\n")
    (ctx / "server-env.json").write_text(json.dumps(desc.get("server_env") or {}))
    log = desc.get("log", "")
    if log:
        (ctx / "server.log.tail").write_text(log)
        stats = [ln for ln in log.splitlines() if "throughput" in ln]
        (ctx / "stats-lines.txt").write_text("\n".join(stats) + "\n" if stats else "(no stats line in the log)\n")
    if desc.get("collect_env"):
        (ctx / "collect-env.txt").write_text(desc["collect_env"])
    if desc.get("metrics"):
        (ctx / "metrics-samples.jsonl").write_text(_metric_rows(desc["metrics"]))
    for name, value in (desc.get("context") or {}).items():
        text = "".join(json.dumps(x) + "\n" for x in value) if name.endswith(".jsonl") else json.dumps(value)
        (ctx / name).write_text(text)
    procs = []
    for p in desc.get("process") or []:
        label, pid, title = ROLE_DEFAULTS.get(p["role"], ("Other", 301, "python"))
        label, pid, title = p.get("label", label), int(p.get("pid", pid)), p.get("title", title)
        d = dest / "stacks" / f"{label}-{pid}"
        d.mkdir(parents=True)
        dumps = p.get("dumps") or [p["dump"]] * int(p.get("samples", 3))
        spin = p.get("cpu", "idle") == "spin"
        for k, text in enumerate(dumps):
            threads = parse_dump(text)
            native = p.get("native", any(not f.python for t in threads for f in t.frames))
            t = T0 + k * INTERVAL
            main = {th.tid: spin and (th.tid == pid or th.name == "MainThread") for th in threads}
            procfs = {str(th.tid): {"comm": title[:15], "state": "R" if main[th.tid] else "S",
                                    "cpu": 10.0 + (k * INTERVAL * 0.98 if main[th.tid] else 0.0),
                                    "wchan": "0" if main[th.tid] else "futex_do_wait"} for th in threads}
            sample = {"k": k, "pid": pid, "label": label, "t": t, "procfs": {"t": t, "pid": pid, "threads": procfs},
                      "threads": [{"os_thread_id": th.tid, "thread_name": th.name, "active": main[th.tid],
                                   "frames": th.python_frames()} for th in threads]}
            (d / f"sample-{k}.json").write_text(json.dumps(sample))
            if native:
                (d / f"sample-{k}.native.txt").write_text(f"Process {pid}: {title}\nPython v3.12.13\n\n{text}\n")
        procs.append({"pid": pid, "label": label, "role": p["role"], "title": title,
                      "stacks_dir": f"stacks/{label}-{pid}"})
    (dest / "processes.json").write_text(json.dumps(procs))
    if desc.get("gpu"):
        engine = [p["pid"] for p in procs if p["role"] in ("engine_core", "worker")]
        (ctx / "gpu.json").write_text(json.dumps(_gpu_json(desc["gpu"], engine)))
    return dest


def fixture_paths() -> list[Path]:
    return sorted((ROOT / "tests" / "unit" / "data" / "known").glob("*.toml"))
