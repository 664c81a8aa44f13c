"""Per-thread verdicts and a stable hang signature from the samples of a bundle.

Definitions (the contract the tests check):

* **wait primitive**: a frame of the standard library (threading, queue,
  selectors, multiprocessing, asyncio, socket, ...), of pyzmq, or of repro's own
  injected-wait helper. A thread sitting in one is waiting, and the frame says
  nothing about *why*.
* **stuck frame**: the innermost frame of a thread that is not a wait primitive,
  taken on the part of the stack that all samples share.
* **verdict** of a thread over the samples (CPU time from /proc):
  ``blocked``: no CPU progress (< 5 % of one core) and it stays inside the same
  frames below its outer loop; ``busy``: CPU progress while it stays inside the
  same frames below its outer loop (spinning); ``progressing``: its stack moves
  through its outer loop (work gets done), or CPU is used with changing stacks;
  ``idle``: it waits for work where vLLM waits for work (EngineCore's main thread in
  ``EngineCoreProc._process_input_queue``: it only gets there when it holds no request);
  ``unknown``: fewer than two usable samples.
* **CUDA wait**: a thread whose native frames (``--native`` dumps) hold a host-side CUDA
  synchronization in every dump (``cuEventSynchronize`` ...; see :mod:`repro.analyze.native`), or
  whose Python stack ends in torch's ``synchronize`` in every sample. torch's synchronize frames are
  wait primitives; the CPU such a thread burns is the driver's spin-wait, so it is ``blocked``, not
  ``busy``.
* **signature**: sha1 (12 hex digits) over, for every EngineCore and Worker
  process (all processes when there are none), the process label, the main
  thread's name and the shared frames from the stuck frame outwards (function
  and file name, no line numbers, no pids). Two captures of the same hang give
  the same signature; a different hang point gives a different one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from repro.analyze import gpu as gpu_state
from repro.bundle.reader import bundle_processes
from repro.analyze.native import cuda_wait_frame, driver_frame, is_torch_sync, load_dumps

CPU_BLOCKED_FRACTION = 0.05  # of one core, over the sampling window
SIGNATURE_FRAMES = 8

_STDLIB = re.compile(r"/lib(?:64)?/python3\.\d+/(?!site-packages/|dist-packages/)")
WAIT_FILES = re.compile(r"(/zmq/|/threading\.py$|/queue\.py$|/selectors\.py$|/socket\.py$|/ssl\.py$|"
                        r"/multiprocessing/|/asyncio/|/concurrent/futures/|/subprocess\.py$|/contextlib\.py$)")
# repro's injected stall polls a release flag through these helpers: they are the wait, not the cause.
WAIT_FUNCS = {("fault.py", "_block"), ("fault.py", "Injector.is_released"), ("fault.py", "Injector.poll_control")}
# The loops a healthy thread runs forever: a stack that only shares these across samples is moving.
OUTER_LOOPS = {"EngineCoreProc.run_busy_loop", "EngineCoreProc.run_engine_core", "run_engine_core",
               "EngineCoreProc._process_engine_step",
               "WorkerProc.worker_busy_loop", "WorkerProc.worker_main", "Thread.run", "Thread._bootstrap_inner",
               "Thread._bootstrap", "<module>", "main", "_run_module_as_main", "_run_code", "run",
               "BaseEventLoop.run_forever", "BaseEventLoop.run_until_complete", "Runner.run", "uvloop_run",
               "BaseProcess._bootstrap", "BaseProcess.run", "spawn_main", "_main"}

ROLE_ORDER = {"engine_core": 0, "worker": 1, "api_server": 2, "launcher": 3, "other": 4}
# Where vLLM waits for work: a thread stuck here is idle (EngineCore only loops here while it has no request).
IDLE_WAITS = {"EngineCoreProc._process_input_queue"}


def is_wait_primitive(frame: dict[str, Any]) -> bool:
    fn = frame.get("filename") or ""
    if (Path(fn or frame.get("short_filename") or "").name, frame.get("name")) in WAIT_FUNCS:
        return True
    if is_torch_sync(frame):  # a wait for the GPU: the frame says nothing about why
        return True
    return bool(_STDLIB.search(fn) or WAIT_FILES.search(fn))


def frame_key(frame: dict[str, Any]) -> str:
    """A frame without its line number: `function (file.py)`."""
    return f"{frame.get('name')} ({frame.get('short_filename') or Path(frame.get('filename') or '?').name})"


def frame_text(frame: dict[str, Any]) -> str:
    return f"{frame.get('name')} ({frame.get('short_filename') or Path(frame.get('filename') or '?').name}:" \
           f"{frame.get('line')})"


@dataclass
class ThreadVerdict:
    tid: int
    name: str
    verdict: str  # blocked | busy | progressing | idle | unknown
    stuck_frame: str | None  # function (file.py:line)
    stack: list[str]  # the shared frames, innermost first, with line numbers (of the last sample)
    cpu_seconds: float | None  # CPU time used during the sampling window
    window_seconds: float | None
    state: str | None  # last /proc state letter
    wchan: str | None
    samples: int
    main: bool
    signature_frames: list[str] = field(default_factory=list)  # from the stuck frame outward, no lines
    cuda_wait: str | None = None  # the CUDA wait it sits in (native frame, else torch's synchronize frame)
    native_tip: list[str] = field(default_factory=list)  # native frames above its Python stack (last dump)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProcessVerdict:
    pid: int
    label: str
    role: str
    title: str
    verdict: str  # the main thread's verdict
    stuck_frame: str | None
    threads: list[ThreadVerdict]
    samples_ok: int
    samples_total: int
    errors: list[str] = field(default_factory=list)

    @property
    def main_thread(self) -> ThreadVerdict | None:
        return next((t for t in self.threads if t.main), None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["threads"] = [t.to_dict() for t in self.threads]
        return d


def _common_outer(stacks: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The outermost frames every sample shares (compared without line numbers), innermost first."""
    if not stacks:
        return []
    rev = [list(reversed(s)) for s in stacks]
    n = 0
    while all(len(r) > n for r in rev) and len({frame_key(r[n]) for r in rev}) == 1:
        n += 1
    return list(reversed(rev[-1][:n]))  # frames (with the last sample's line numbers)


def thread_verdict(tid: int, name: str, stacks: list[list[dict[str, Any]]], cpu: list[tuple[float, float]],
                   state: str | None, wchan: str | None, main: bool, cuda_native: str | None = None,
                   native_tip: list[str] | None = None) -> ThreadVerdict:
    """`stacks`: per sample, the frames innermost first. `cpu`: (wall time, cpu seconds) per sample.
    `cuda_native`: the CUDA wait every --native dump of the thread shows (None: none, or no dumps)."""
    common = _common_outer(stacks)
    stuck = next((f for f in common if not is_wait_primitive(f)), None)
    idx = common.index(stuck) if stuck is not None else None
    sig = [frame_key(f) for f in common[idx:idx + SIGNATURE_FRAMES]] if idx is not None else \
        [frame_key(f) for f in common[:SIGNATURE_FRAMES]]
    cpu_used = window = None
    if len(cpu) >= 2:
        window = cpu[-1][0] - cpu[0][0]
        cpu_used = max(0.0, cpu[-1][1] - cpu[0][1])
    n = len(stacks)
    stuck_below_loop = stuck is not None and stuck.get("name") not in OUTER_LOOPS
    if n < 2 and window is None:
        verdict = "unknown"
    elif n < 2:
        verdict = "unknown"
    else:
        moving_cpu = window is not None and window > 0 and cpu_used is not None and \
            cpu_used / window >= CPU_BLOCKED_FRACTION
        if window is None:  # no /proc data: judge by stacks alone
            identical = len({tuple(frame_text(f) for f in s) for s in stacks}) == 1
            verdict = "blocked" if identical and stuck_below_loop else "progressing"
        elif not moving_cpu:
            verdict = "blocked" if stuck_below_loop else "progressing"
        else:
            verdict = "busy" if stuck_below_loop else "progressing"
    torch_sync = next((f for f in common[:idx] if is_torch_sync(f)), None) if idx is not None else None
    cuda = cuda_native or (frame_text(torch_sync) if torch_sync is not None else None)
    if verdict == "busy" and cuda:
        verdict = "blocked"  # the CPU it burns is the CUDA driver's spin-wait, not progress
    if verdict in ("blocked", "busy") and stuck is not None and stuck.get("name") in IDLE_WAITS:
        verdict = "idle"
    return ThreadVerdict(tid=tid, name=name, verdict=verdict, stuck_frame=frame_text(stuck) if stuck else None,
                         stack=[frame_text(f) for f in common], cpu_seconds=None if cpu_used is None else
                         round(cpu_used, 3), window_seconds=None if window is None else round(window, 3),
                         state=state, wchan=wchan, samples=n, main=main, signature_frames=sig,
                         cuda_wait=cuda,
                         native_tip=native_tip or [])


def load_samples(proc_dir: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(proc_dir.glob("sample-*.json"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0)):
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            out.append({"k": int(re.sub(r"\D", "", p.stem) or 0), **data})
    return out


def with_native(samples: list[dict[str, Any]], dumps: dict[int, list[Any]]) -> list[dict[str, Any]]:
    """The samples, where a JSON dump failed (or is missing) completed from the text dump of the same round."""
    out, seen = [], set()
    for s in samples:
        k = s.get("k")
        seen.add(k)
        if not s.get("threads") and k in dumps:
            s = {**s, "threads": [{"os_thread_id": t.tid, "thread_name": t.name, "frames": t.python_frames()}
                                  for t in dumps[k]], "from_native": True}
        out.append(s)
    out += [{"k": k, "threads": [{"os_thread_id": t.tid, "thread_name": t.name, "frames": t.python_frames()}
                                 for t in th], "from_native": True} for k, th in dumps.items() if k not in seen]
    return sorted(out, key=lambda s: s.get("k") if isinstance(s.get("k"), int) else -1)


def _cuda_native(tid: int, dumps: dict[int, list[Any]]) -> tuple[str | None, list[str]]:
    """(the CUDA wait every native dump of thread `tid` shows, else None; its native tip in the last dump)."""
    mine = [t for threads in dumps.values() for t in threads if t.tid == tid]
    if not mine:
        return None, []
    waits = [cuda_wait_frame(t) or driver_frame(t) for t in mine]  # a sync, else a driver call that never returns
    names = {w.name for w in waits if w is not None}
    tip = [f.text() for f in mine[-1].native_tip()][:8]
    if len(names) == 1 and all(w is not None for w in waits):
        return next(w.key() for w in waits if w is not None), tip
    return None, tip


def process_verdict(proc: dict[str, Any], samples: list[dict[str, Any]],
                    dumps: dict[int, list[Any]] | None = None) -> ProcessVerdict:
    """`dumps`: the process's --native text dumps by sample index (:func:`repro.analyze.native.load_dumps`)."""
    pid = int(proc["pid"])
    dumps = dumps or {}
    samples = with_native(samples, dumps)
    by_tid: dict[int, dict[str, Any]] = {}
    for s in samples:
        threads = s.get("threads") or []
        for t in threads:
            tid = int(t.get("os_thread_id") or 0)
            e = by_tid.setdefault(tid, {"name": t.get("thread_name") or "", "stacks": [], "cpu": []})
            e["stacks"].append(t.get("frames") or [])
    for tid, e in by_tid.items():
        for s in samples:
            pf = (s.get("procfs") or {}).get("threads") or {}
            info = pf.get(str(tid))
            if info is not None and (s.get("threads") or s.get("procfs")):
                e["cpu"].append((float((s.get("procfs") or {}).get("t") or s.get("t") or 0), float(info["cpu"])))
                e["state"], e["wchan"] = info.get("state"), info.get("wchan")
    threads = []
    for tid, e in by_tid.items():
        main = tid == pid or e["name"] == "MainThread"
        cuda, tip = _cuda_native(tid, dumps)
        threads.append(thread_verdict(tid, e["name"], e["stacks"], e["cpu"], e.get("state"), e.get("wchan"), main,
                                      cuda, tip))
    threads.sort(key=lambda t: (not t.main, t.tid))
    main_t = next((t for t in threads if t.main), None)
    errors = sorted({s["error"] for s in samples if s.get("error")})
    return ProcessVerdict(pid=pid, label=proc.get("label") or str(pid), role=proc.get("role") or "other",
                          title=proc.get("title") or "", verdict=main_t.verdict if main_t else "unknown",
                          stuck_frame=main_t.stuck_frame if main_t else None, threads=threads,
                          samples_ok=sum(1 for s in samples if s.get("threads")), samples_total=len(samples),
                          errors=errors)


def signature(processes: list[ProcessVerdict]) -> tuple[str | None, list[str]]:
    """(12-hex signature or None when no stacks were read, the lines it hashes)."""
    engine = [p for p in processes if p.role in ("engine_core", "worker")]
    chosen = engine or processes
    lines = []
    for p in sorted(chosen, key=lambda p: (ROLE_ORDER.get(p.role, 9), p.label)):
        m = p.main_thread
        if m is None or not m.signature_frames:
            continue
        lines.append(f"{p.label}/{re.sub(r'[0-9]+', 'N', m.name)}: " + " < ".join(m.signature_frames))
    if not lines:
        return None, []
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:12], lines


def analyze_bundle_dir(bundle: Path, catalogue: Any = None) -> dict[str, Any]:
    """The analysis of a bundle directory (also written into it as analysis.json by capture).

    `catalogue`: the known-hang catalogue to match against (:func:`repro.analyze.catalogue.load`);
    default the shipped one plus REPRO_CATALOGUE."""
    bundle = Path(bundle)
    procs = bundle_processes(bundle)
    pvs = []
    for proc in procs:
        d = bundle / proc["stacks_dir"] if proc.get("stacks_dir") else None
        samples = load_samples(d) if d and d.is_dir() else []
        pvs.append(process_verdict(proc, samples, load_dumps(d) if d and d.is_dir() else {}))
    pvs.sort(key=lambda p: (ROLE_ORDER.get(p.role, 9), p.pid))
    sig, sig_lines = signature(pvs)
    engine = next((p for p in pvs if p.role == "engine_core"), None)
    headline_proc = engine or (pvs[0] if pvs else None)
    verdict = headline_proc.verdict if headline_proc else "unknown"
    progress = metrics_progress(bundle)
    reason = "stacks"
    cul = culprit(pvs)
    if engine is not None and verdict in ("blocked", "busy"):
        if progress and progress["tokens"] > 0:
            verdict, reason, cul = "progressing", (f"the token counters advanced by {progress['tokens']:g} during "
                                                   f"the {progress['window_s']:.0f} s of sampling"), None
        elif cul and cul["process"] != engine.label and cul["verdict"] == "progressing":
            verdict, reason = "progressing", f"EngineCore waits for {cul['process']}, which is progressing"
        elif WORKER_WAIT_FILE in (engine.stuck_frame or "") and cul and cul["process"] == engine.label and any(
                p.role == "worker" and p.main_thread and p.main_thread.verdict == "progressing" for p in pvs):
            verdict, reason, cul = "progressing", "EngineCore waits for its workers, which are progressing", None
    gauges = metrics_gauges(bundle)
    if engine is not None and verdict == "idle":
        reason, cul = f"EngineCore waits for requests in {engine.stuck_frame}: it holds none", None
        if gauges and (gauges["running"] or gauges["waiting"]):
            reason += (f"; the server's gauges still read running={gauges['running']:g}, waiting="
                       f"{gauges['waiting']:g}: requests the API server holds never reached the engine, or the "
                       "gauges are stale")
    elif engine is not None and verdict == "progressing" and reason == "stacks" and gauges and progress and \
            not progress["tokens"]:
        if not gauges["running"] and not gauges["waiting"]:
            verdict, reason, cul = "idle", "nothing running or waiting and no tokens counted during the sampling", None
        else:
            verdict, reason = "busy", (
                f"a livelock: EngineCore's step loop runs (its stacks move) but the token counters stayed flat for "
                f"the {progress['window_s']:.0f} s of sampling with running={gauges['running']:g}, "
                f"waiting={gauges['waiting']:g}: the scheduler schedules nothing")
    if verdict == "idle":  # workers waiting in the ring for EngineCore's next command wait for work too
        for p in pvs:
            m = p.main_thread
            if p.role == "worker" and m and m.verdict == "blocked" and WORKER_WAIT_FILE in (m.stuck_frame or ""):
                m.verdict = p.verdict = "idle"
    stuck_threads = [
        {"process": p.label, "pid": p.pid, "thread": t.name, "tid": t.tid, "verdict": t.verdict,
         "stuck_frame": t.stuck_frame}
        for p in pvs for t in p.threads if t.verdict in ("blocked", "busy") and
        (t.main or not _idle_helper(t))]
    cuda = cul.get("cuda_wait") if cul and verdict in ("blocked", "busy") else None
    if cuda and reason == "stacks":
        reason = (f"{cul['process']}'s {cul['thread']} waits for the GPU in {cuda} in every sample; the CUDA "
                  "driver spin-waits, so the CPU it burns is no progress")
    gpu = gpu_state.read(bundle, {p.pid for p in pvs if p.role in ("engine_core", "worker")})
    analysis = {
        "culprit": cul,
        "verdict": verdict,
        "verdict_reason": reason,
        "metrics_progress": progress,
        "stuck_process": headline_proc.label if headline_proc else None,
        "stuck_frame": headline_proc.stuck_frame if headline_proc else None,
        "cuda_wait": cuda,
        "gpu": {**gpu.to_dict(), "note": gpu_state.note(gpu, cuda, verdict in ("blocked", "busy"))} if gpu else None,
        "signature": sig,
        "signature_lines": sig_lines,
        "processes": [p.to_dict() for p in pvs],
        "stuck_threads": stuck_threads,
    }
    from repro.analyze import known  # known matching reads this analysis

    analysis.update(known.analysis_fields(bundle, analysis, catalogue))
    return analysis


def metrics_gauges(bundle: Path) -> dict[str, float] | None:
    """Requests running and waiting in the last /metrics sample of the capture (None without samples)."""
    try:
        rows = [json.loads(ln) for ln in (bundle / "context" / "metrics-samples.jsonl").read_text().splitlines()
                if ln.strip()]
    except (OSError, ValueError):
        return None
    rows = [r for r in rows if isinstance(r, dict) and "vllm:num_requests_running" in r]
    if not rows:
        return None
    last = max(rows, key=lambda r: r.get("t", 0))
    return {"running": float(last["vllm:num_requests_running"]),
            "waiting": float(last.get("vllm:num_requests_waiting", 0.0))}


def metrics_progress(bundle: Path) -> dict[str, float] | None:
    """Tokens (prompt + generation) the server counted between the first and last /metrics sample of the capture.

    A healthy engine under load can sit in the same wait in every sample (EngineCore waiting for its worker's
    forward pass); moving counters overrule stacks that look stuck.
    """
    path = bundle / "context" / "metrics-samples.jsonl"
    try:
        rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, ValueError):
        return None
    rows = [r for r in rows if "t" in r and "vllm:generation_tokens_total" in r]
    if len(rows) < 2:
        return None
    rows.sort(key=lambda r: r["t"])

    def tok(r: dict[str, float]) -> float:
        return r.get("vllm:generation_tokens_total", 0.0) + r.get("vllm:prompt_tokens_total", 0.0)

    return {"tokens": tok(rows[-1]) - tok(rows[0]), "window_s": rows[-1]["t"] - rows[0]["t"],
            "requests": rows[-1].get("vllm:request_success_total", 0.0) - rows[0].get("vllm:request_success_total", 0.0)}


# vLLM's helper threads that always sit waiting; listed in the analysis but not as "stuck".
_IDLE_HELPERS = ("process_input_sockets", "process_output_sockets", "MultiprocWorkerMonitor", "monitor_workers",
                 "_handle_workers", "_handle_results", "_handle_tasks", "pydevd", "_worker", "run_forever",
                 "_monitor", "wait_for_engine_startup", "SignalCallback._run", "WorkerThread.run", "TMonitor.run",
                 "death_pipe_monitor", "monitor_engine_liveness")


def _idle_helper(t: ThreadVerdict) -> bool:
    text = " ".join(t.stack)
    return any(h in text for h in _IDLE_HELPERS)


WORKER_WAIT_FILE = "shm_broadcast.py"  # EngineCore <-> Worker ring: a thread waiting here waits for the other side


def culprit(processes: list[ProcessVerdict]) -> dict[str, Any] | None:
    """Where the hang most likely is: EngineCore's main thread, unless it only waits for its workers
    (stuck in the shared-memory ring) while a worker's main thread is blocked or busy elsewhere."""
    engine = next((p for p in processes if p.role == "engine_core"), None)
    if engine is None or engine.main_thread is None:
        return None
    pick: tuple[ProcessVerdict, ThreadVerdict] = (engine, engine.main_thread)
    if WORKER_WAIT_FILE in (engine.stuck_frame or ""):
        for p in processes:
            m = p.main_thread
            if p.role == "worker" and m and m.verdict in ("blocked", "busy") and \
                    WORKER_WAIT_FILE not in (m.stuck_frame or ""):
                pick = (p, m)
                break
    p, t = pick
    return {"process": p.label, "pid": p.pid, "thread": t.name, "verdict": t.verdict, "stuck_frame": t.stuck_frame,
            "cuda_wait": t.cuda_wait}
