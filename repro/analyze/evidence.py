"""The facts of a bundle that the known-hang catalogue matches against, read once into typed data.

From the analysis (:func:`repro.analyze.stacks.analyze_bundle_dir`): every thread's shared stack,
verdict and CUDA wait. From the bundle's files: the ``--native`` dumps, the log tail and stats lines,
the metrics at capture, the storage finding, the server command and environment, the GPUs, the vLLM
version, and the faults repro's own plugin injected (its ``repro fault: ...`` log lines, its event records
in ``context/injected.jsonl`` or among ``context/events.jsonl``, ``REPRO_INJECT`` in the server's
environment, ``repro_injected_*`` frames).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro.analyze import gpu as gpu_state
from repro.bundle.reader import bundle_processes
from repro.analyze.native import load_dumps
from repro.monitor.logs import parse_stats_line

_LINE = re.compile(r":\d+\)$")
_FAULT = re.compile(r"repro fault: (?P<event>[\w-]+)(?P<rest>.*)$")
_PIDS = (re.compile(r"\(pid (\d+)\)\s*$"), re.compile(r"\bin pid (\d+)\b"), re.compile(r"\(\S+ pid=(\d+)\)"))
_KIND = re.compile(r"\bkind=([\w-]+)")
_ARMED = re.compile(r"armed '([^']*)'")
NOT_FAULTS = {"armed", "control", "ignoring", "released", "slow-end", "released-all"}
INJECTED_FRAME = re.compile(r"^repro_injected_\w+")


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""


def _json(p: Path) -> Any:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class ThreadFacts:
    process: str  # label (EngineCore, Worker, ...)
    role: str  # engine_core | worker | api_server | launcher | other
    pid: int
    name: str
    main: bool
    verdict: str
    frames: list[str]  # the shared stack, innermost first, "function (file.py)" without line numbers
    native: list[str]  # frame names of its --native dumps (all dumps), "name (lib)" or "function (file.py)"
    cuda_wait: str | None = None


def spec_kinds(spec: str) -> set[str]:
    """The fault kinds of a fault spec (``stall-after=30;write-stall``), without parsing their values."""
    kinds = set()
    for part in spec.split(";"):
        k = re.split(r"[=,]", part.strip(), maxsplit=1)[0].strip()
        if k and k != "release":
            kinds.add(k)
    return kinds


@dataclass
class Injected:
    """Faults repro's plugin injected into this server."""

    active: set[str] = field(default_factory=set)  # fired (or armed) and not released at capture
    history: set[str] = field(default_factory=set)  # every kind seen
    frames: set[str] = field(default_factory=set)  # repro_injected_* frames in the stacks
    sources: list[str] = field(default_factory=list)  # where the evidence came from

    @property
    def any(self) -> bool:
        return bool(self.active or self.frames)

    def describe(self) -> str:
        what = ", ".join(sorted(self.active)) or ", ".join(sorted(self.frames))
        return f"{what} ({'; '.join(self.sources)})" if self.sources else what


def is_fault_record(e: dict[str, Any]) -> bool:
    """A record of the fault plugin (REPRO_INJECT_EVENTS): it names its process, and a kind unless a release."""
    return "pid" in e and "class" not in e and (e.get("event") == "released" or "kind" in e)


def _pid_of(line: str) -> str:
    for pat in _PIDS:
        m = pat.search(line)
        if m:
            return m.group(1)
    return "?"


def read_injected(log_text: str, events: list[dict[str, Any]], env: dict[str, str],
                  threads: list[ThreadFacts]) -> Injected:
    """Replay the plugin's records: a fired fault stays active in its process until that process logs `released`."""
    inj = Injected()
    fired: dict[str, set[str]] = {}  # pid -> kinds
    armed: set[str] = set()
    released = False
    for ln in log_text.splitlines():
        m = _FAULT.search(ln)
        if not m:
            continue
        pid = _pid_of(ln)
        event, rest = m.group("event"), m.group("rest")
        if event == "released":
            fired.pop(pid, None)
            released = True
        elif event == "slow-end":
            fired.get(pid, set()).discard("stall-for")
        elif event in ("armed", "control"):
            a = _ARMED.search(rest)
            if a:
                armed |= spec_kinds(a.group(1))
        elif event not in NOT_FAULTS:
            k = _KIND.search(rest)
            fired.setdefault(pid, set()).add(k.group(1) if k else event)
    if fired or armed:
        inj.sources.append("repro fault lines in the server log")
    for e in events:
        pid = str(e.get("pid", "?"))
        if e.get("event") == "released":
            fired.pop(pid, None)
            released = True
        elif e.get("event") == "slow-end":
            fired.get(pid, set()).discard("stall-for")
        elif e.get("event"):
            fired.setdefault(pid, set()).add(str(e.get("kind") or e["event"]))
    if events:
        inj.sources.append("the plugin's event records")
    spec = (env.get("REPRO_INJECT") or "").strip()
    if spec:
        armed |= spec_kinds(spec)
        inj.sources.append(f"REPRO_INJECT={spec!r} in the server's environment")
    inj.active = set().union(*fired.values()) if fired else set()
    inj.history = inj.active | armed | {k for ks in fired.values() for k in ks}
    if not inj.active and armed and not released:
        inj.active = set(armed)  # armed and never released: the plugin left no record of firing
    for t in threads:
        inj.frames |= {f.split(" (")[0] for f in t.frames if INJECTED_FRAME.match(f)}
    if inj.frames:
        inj.sources.append("repro_injected_* frames in the stacks")
    return inj


@dataclass
class Evidence:
    vllm_version: str | None
    verdict: str
    threads: list[ThreadFacts]
    log_lines: list[str]
    metrics: dict[str, float] | None  # running, waiting, kv_cache (0-1), tokens, preemptions (changes); source
    metrics_source: str | None
    storage: Any  # repro.storage.finding.StorageFinding | None
    server_command: str
    server_env: dict[str, str]
    gpu: gpu_state.GpuState | None
    gpu_names: list[str]
    injected: Injected
    has_native: bool


def _metrics(bundle: Path, analysis: dict[str, Any], stats: list[str]) -> tuple[dict[str, float] | None, str | None]:
    rows = []
    for ln in _read(bundle / "context" / "metrics-samples.jsonl").splitlines():
        try:
            r = json.loads(ln)
        except ValueError:
            continue
        if isinstance(r, dict):
            rows.append(r)
    rows.sort(key=lambda r: r.get("t", 0))
    if rows:
        last, first = rows[-1], rows[0]
        m = {"running": last.get("vllm:num_requests_running"), "waiting": last.get("vllm:num_requests_waiting"),
             "kv_cache": last.get("vllm:kv_cache_usage_perc")}
        prog = analysis.get("metrics_progress")
        if prog:
            m["tokens"] = prog["tokens"]
        if len(rows) > 1 and "vllm:num_preemptions_total" in last:
            m["preemptions"] = last["vllm:num_preemptions_total"] - first.get("vllm:num_preemptions_total", 0.0)
        return {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}, "metrics-samples.jsonl"
    parsed = [s for s in (parse_stats_line(x) for x in stats) if s is not None]
    if not parsed:
        return None, None
    s = parsed[-1]
    m = {"running": float(s.running), "waiting": float(s.waiting),
         "tokens": float(s.prompt_tps + s.generation_tps)}
    if s.kv_usage_pct is not None:
        m["kv_cache"] = s.kv_usage_pct / 100.0
    if len(parsed) > 1 and s.preemptions is not None:
        m["preemptions"] = float(s.preemptions)
    return m, "the last stats line"


def _gpu_names(bundle: Path, gpu: gpu_state.GpuState | None) -> list[str]:
    names = list(gpu.names) if gpu else []
    for ln in _read(bundle / "context" / "collect-env.txt").splitlines():
        m = re.search(r"GPU \d+: (.+?)\s*$", ln)
        if m:
            names.append(m.group(1))
    return names


def gather(bundle: Path, analysis: dict[str, Any]) -> Evidence:
    """The evidence of `bundle` given its analysis."""
    from repro.analyze.issue import find_storage  # issue.py imports the analysis: import here, not at the top

    bundle = Path(bundle)
    man = _json(bundle / "manifest.json") or {}
    procs = {p.get("pid"): p for p in bundle_processes(bundle)}
    threads = []
    has_native = False
    for p in analysis.get("processes") or []:
        rec = procs.get(p["pid"]) or {}
        d = bundle / rec["stacks_dir"] if rec.get("stacks_dir") else None
        dumps = load_dumps(d) if d and d.is_dir() else {}
        has_native = has_native or bool(dumps)
        for t in p.get("threads") or []:
            native = [f.key() for th in (x for ts in dumps.values() for x in ts) if th.tid == t["tid"]
                      for f in th.frames]
            threads.append(ThreadFacts(p["label"], p.get("role") or "other", p["pid"], t["name"], t["main"],
                                       t["verdict"], [_LINE.sub(")", f) for f in t.get("stack") or []],
                                       list(dict.fromkeys(native)), t.get("cuda_wait")))
    stats = [ln for ln in _read(bundle / "context" / "stats-lines.txt").splitlines() if "throughput" in ln]
    log_lines = _read(bundle / "context" / "server.log.tail").splitlines() + stats
    metrics, source = _metrics(bundle, analysis, stats)
    det = _json(bundle / "context" / "detection.json") or man.get("detection") or {}
    cmd = man.get("server_command") or _read(bundle / "context" / "server-command.txt").split()
    env = _json(bundle / "context" / "server-env.json") or {}
    events = [e for e in (_loads(x) for x in _read(bundle / "context" / "injected.jsonl").splitlines()) if e]
    events += [e for e in (_loads(x) for x in _read(bundle / "context" / "events.jsonl").splitlines())
               if e and is_fault_record(e)]  # capture may carry the plugin's records among the run's events
    gpu = gpu_state.read(bundle, {p["pid"] for p in analysis.get("processes") or []
                                  if p.get("role") in ("engine_core", "worker")})
    version = man.get("vllm_version")
    if not version:
        m = re.search(r"vLLM Version\s*:\s*(\S+)", _read(bundle / "context" / "collect-env.txt"))
        version = m.group(1) if m else None
    return Evidence(vllm_version=str(version) if version else None, verdict=str(analysis.get("verdict")),
                    threads=threads, log_lines=log_lines, metrics=metrics, metrics_source=source,
                    storage=find_storage(bundle, det, man),
                    server_command=shlex.join(cmd) if isinstance(cmd, list) else str(cmd),
                    server_env={str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {},
                    gpu=gpu, gpu_names=_gpu_names(bundle, gpu),
                    injected=read_injected("\n".join(log_lines), events, env if isinstance(env, dict) else {},
                                           threads),
                    has_native=has_native)


def _loads(line: str) -> dict[str, Any] | None:
    try:
        v = json.loads(line)
    except ValueError:
        return None
    return v if isinstance(v, dict) else None
