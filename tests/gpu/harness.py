"""The GPU check's driver: start every server a vLLM version needs, run the steps, pack the results.

    python3 -m tests.gpu.harness start LABEL OUT [--cpu]   build the model, start all servers at once, wait
    python3 -m tests.gpu.harness run   LABEL OUT [--cpu]   run the lanes in parallel, stop the servers, pack OUT
    python3 -m tests.gpu.harness all   LABEL OUT [--cpu]   both (one call)
    python3 -m tests.gpu.harness stop  LABEL [--cpu]       stop whatever is left

LABEL names the vLLM under test (0.20.2, 0.26.0; anything with --cpu). Work files live in
``$REPRO_GPU_CHECK_WORK/repro-gpu-check-LABEL`` (default /tmp), hidden-state stores under /dev/shm
(or the work directory when /dev/shm has less than 40 GB free). OUT receives exactly two files:
``gpu-check-LABEL.tar.gz`` (results.json, results.md, the lanes' pytest logs and junit files, server
logs, bundles) and ``gpu-check-LABEL.md`` (results.md). ``--cpu`` runs the same steps against a CPU
vLLM with the kit's tiny model and CPU connector, with the CUDA-only checks skipped: the way to debug
the check before the GPU's few minutes are spent.

Steps are the tests in ``tests/gpu/test_*.py``; each file is a lane (its own pytest process, all lanes
at once), the tests of a lane run in order. Lanes that must not overlap wait for each other's markers
(:func:`wait_marker`). The servers are declared in ``tests/gpu/servers.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SCHEMA = "repro.gpu-check"
VERSION = 1
OUT_LIMIT = 15 * 1024 * 1024  # what comes back from the GPU machine: 16 MiB per file


@dataclass(frozen=True)
class Profile:
    """Sizes and times of the steps: the GPU figures, or a small CPU run that exercises the same code."""

    gpu: bool
    max_model_len: int
    prompt_len: str
    verify_concurrency: int
    verify_seconds: float
    fidelity: tuple[tuple[int, float], ...]  # (concurrency, seconds)
    hang_steps: int  # the hang is injected after this many engine steps with work (the watchdog's probes make few)
    hang_window: float
    stall_window: float
    capture_budget: float
    storm_concurrency: int
    storm_seconds: float
    storm_timeout: float  # client timeout of the abort storm: short enough to abort, long enough to schedule first
    reproducer_requests: int
    reproducer_concurrency: int
    startup_timeout: float
    run_budget: float  # seconds for all lanes of `run`
    server_extra: tuple[str, ...] = ()
    dtype: str = "bfloat16"
    hidden: int = 1024
    layers: int = 8


GPU = Profile(gpu=True, max_model_len=2048, prompt_len="128-2048", verify_concurrency=32, verify_seconds=120,
              fidelity=((32, 50), (128, 50)), hang_steps=300, hang_window=15, stall_window=10,
              capture_budget=60, storm_concurrency=64, storm_seconds=75, storm_timeout=0.1, reproducer_requests=400,
              reproducer_concurrency=64, startup_timeout=420, run_budget=520,
              server_extra=("--enforce-eager", "--gpu-memory-utilization", "0.15", "--kv-cache-memory-bytes",
                            str(8 << 30)))
# max_tokens=1 requests live one engine step: they must be long enough to span steps on the CPU (else the
# engine's gauges read 0 between steps), and longer than max_model_len so that clipping happens.
CPU = Profile(gpu=False, max_model_len=2304, prompt_len="128-4096", verify_concurrency=8, verify_seconds=40,
              fidelity=((8, 25), (32, 25)), hang_steps=60, hang_window=15, stall_window=10,
              capture_budget=90, storm_concurrency=16, storm_seconds=75, storm_timeout=0.3, reproducer_requests=60,
              reproducer_concurrency=16, startup_timeout=600, run_budget=1500,
              dtype=os.environ.get("REPRO_GPU_CHECK_DTYPE", "bfloat16"), hidden=128, layers=2)


@dataclass
class Context:
    """What every step knows: the version under test, the profile, where things are."""

    label: str
    gpu: bool
    work: Path
    storage_root: Path
    vllm_version: str = "?"
    model: str = ""
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    started_at: str = ""
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def profile(self) -> Profile:
        return GPU if self.gpu else CPU

    @property
    def hang_inject(self) -> str:
        """A hang inside CUDA on a GPU; on a CPU, where there is no CUDA stream, a scheduler stall instead. Counted in
        engine steps, not seconds: the watchdog's probe (one tiny request every 5 s) starts a time trigger long before
        the lane's load, and the hang must not fall into another lane's GPU reading."""
        return f"{'gpu-hang' if self.gpu else 'stall-after'}={self.profile.hang_steps}steps"

    @property
    def slow(self) -> float:
        """How much longer a step may take on the CPU machine than on the GPU."""
        return 1.0 if self.gpu else 3.0

    @property
    def version_tuple(self) -> tuple[int, ...]:
        parts = []
        for p in self.vllm_version.split("+")[0].split("."):
            if not p.isdigit():
                break
            parts.append(int(p))
        return tuple(parts)

    def at_least(self, *v: int) -> bool:
        return self.version_tuple >= v

    @property
    def state_path(self) -> Path:
        return self.work / "state.json"

    @property
    def results(self) -> Path:
        return self.work / "results"

    @property
    def artifacts(self) -> Path:
        return self.work / "artifacts"

    def save(self) -> None:
        d = asdict(self)
        d.update(work=str(self.work), storage_root=str(self.storage_root), schema=SCHEMA + ".state", version=VERSION)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(d, indent=2, default=str) + "\n")
        os.replace(tmp, self.state_path)

    @classmethod
    def load(cls, path: Path) -> "Context":
        d = json.loads(Path(path).read_text())
        return cls(label=d["label"], gpu=d["gpu"], work=Path(d["work"]), storage_root=Path(d["storage_root"]),
                   vllm_version=d.get("vllm_version", "?"), model=d.get("model", ""),
                   servers=d.get("servers", {}), started_at=d.get("started_at", ""), machine=d.get("machine", {}))


def profile_from_env() -> Profile:
    """The profile of the check being run (for per-step timeouts at import time): GPU unless the state says CPU."""
    p = os.environ.get("REPRO_GPU_CHECK_STATE")
    try:
        return GPU if json.loads(Path(p).read_text()).get("gpu", True) else CPU  # type: ignore[arg-type]
    except (TypeError, OSError, ValueError):
        return GPU


def work_dir(label: str) -> Path:
    return Path(os.environ.get("REPRO_GPU_CHECK_WORK", "/tmp")) / f"repro-gpu-check-{label}"


def _iso(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t if t is not None else time.time()))


def say(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- processes ------------------------------------------------------------------------------------
def repro_argv(*args: str) -> list[str]:
    """`repro ARGS` with this interpreter and this checkout's kit (the one the steps import)."""
    return [sys.executable, "-m", "repro", *args]


def child_env(ctx: Context | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop_group(pgid: int, grace: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after `grace`, wait until it is gone; unlink its /dev/shm
    queues. Never signals a process outside the group."""
    from repro.server import shm
    from repro.watch.servers import group_pids

    members = group_pids(pgid)
    if not members:
        return
    segs = shm.segments(members)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 15.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.monotonic() + wait
        while group_pids(pgid) and time.monotonic() < deadline:
            time.sleep(0.3)
        if not group_pids(pgid):
            break
    shm.remove_unused(segs)


def http_ok(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def complete(url: str, model: str, prompt: list[int], timeout: float = 60.0, **extra: Any) -> dict[str, Any]:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 1, **extra}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def model_id(url: str) -> str:
    with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
        return str(json.loads(r.read())["data"][0]["id"])


# -- start ----------------------------------------------------------------------------------------
def _storage_root(label: str, work: Path, gpu: bool) -> Path:
    """/dev/shm (where the field's stores are), unless a GPU run would find less than 40 GB free there."""
    shm_dir = Path("/dev/shm")
    try:
        free = shutil.disk_usage(shm_dir).free if shm_dir.is_dir() else 0
    except OSError:
        free = 0
    return (shm_dir / f"repro-gpu-check-{label}") if free >= (40e9 if gpu else 1e9) else (work / "hs")


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            info["gpus"] = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
        except (OSError, subprocess.TimeoutExpired):
            pass
    probe = "import torch, vllm; print(vllm.__version__); print(torch.__version__)"
    try:
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=child_env())
        lines = r.stdout.split()
        if len(lines) >= 2:
            info["vllm"], info["torch"] = lines[0], lines[1]
        else:
            info["probe_error"] = (r.stderr.strip().splitlines() or ["?"])[-1]
    except (OSError, subprocess.TimeoutExpired) as exc:
        info["probe_error"] = str(exc)
    return info


def _build_model(ctx: Context) -> str:
    from repro.server import tinymodel

    p = ctx.profile
    if not p.gpu:
        return str(tinymodel.ensure())  # the cached float32 tiny model, served in p.dtype
    out = ctx.work / f"model-{p.hidden}x{p.layers}-{p.dtype}"
    if not tinymodel.is_built(out):
        tinymodel.build(out, hidden=p.hidden, layers=p.layers, dtype=p.dtype)
    return str(out)


def server_settings(ctx: Context, name: str) -> Any:
    """The launch settings of server `name` (ServerSettings), before its spec's tweak."""
    from repro.scenario import ServerSettings
    from tests.conftest import free_port

    p = ctx.profile
    s = ServerSettings(model=ctx.model, port=free_port(), storage=str(ctx.storage_root / name),
                       inject_control=str(ctx.work / "servers" / name / "inject.control"),
                       max_model_len=p.max_model_len, startup_timeout=p.startup_timeout, dtype=p.dtype,
                       extra_args=list(p.server_extra))
    if p.gpu and ctx.at_least(0, 22):
        s.chunked_prefill = False  # the stock hidden-states connector refuses chunked prefill from 0.22 on
    return s


def _watch_argv(ctx: Context, name: str, settings: Any, flags: list[str], out: Path) -> list[str]:
    argv = ["watch", "--serve", "--model", settings.model, "--port", str(settings.port), "--storage", settings.storage,
            "--max-model-len", str(settings.max_model_len), "--startup-timeout", str(settings.startup_timeout),
            "--out", str(out), *flags]
    if settings.inject_control:
        argv += ["--inject-control", settings.inject_control]
    if settings.chunked_prefill is False:
        argv.append("--no-chunked-prefill")
    if settings.connector != "auto":
        argv += ["--connector", settings.connector]
    if settings.dtype:
        argv += ["--dtype", settings.dtype]
    return repro_argv(*argv, "--", *settings.extra_args)


def _launch(ctx: Context, name: str) -> dict[str, Any]:
    from repro.server.launcher import VllmServer
    from tests.gpu.servers import spec

    sp = spec(name)
    d = ctx.work / "servers" / name
    d.mkdir(parents=True, exist_ok=True)
    s = server_settings(ctx, name)
    sp.tweak(ctx, s)
    Path(s.storage).mkdir(parents=True, exist_ok=True)
    rec: dict[str, Any] = {"name": name, "purpose": sp.purpose, "watch": sp.watch, "port": s.port,
                           "settings": asdict(s),
                           "url": f"http://127.0.0.1:{s.port}", "storage": s.storage, "control": s.inject_control,
                           "dir": str(d), "launched_at": time.time()}
    if sp.watch:
        out = d / "watch"
        argv = _watch_argv(ctx, name, s, sp.watch_flags(ctx), out)
        log = open(d / "watch.out", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env(ctx), cwd=str(d), start_new_session=True)
        log.close()
        rec.update(pgid=proc.pid, command=argv, events=str(out / "events.jsonl"), watch_dir=str(out),
                   log=str(out / "server-001.log"), _proc=proc)
    else:
        server = VllmServer(s, d)
        server.start()
        rec.update(pgid=server.pid, command=server.command, log=str(server.log_path), _proc=server.proc)
    return rec


def _wait_ready(ctx: Context, rec: dict[str, Any], deadline: float) -> None:
    proc = rec.pop("_proc")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            rec["status"] = "exited"
            rec["error"] = f"exited with code {proc.returncode} before it was ready"
            return
        ready = False
        if rec["watch"]:
            try:
                ready = any(e.get("event") == "healthy" for e in
                            (json.loads(x) for x in Path(rec["events"]).read_text().splitlines() if x.strip()))
            except (OSError, ValueError):
                ready = False
        else:
            ready = http_ok(rec["url"] + "/v1/models")
        if ready:
            rec["status"] = "ready"
            rec["ready_s"] = round(time.time() - rec["launched_at"], 1)
            try:
                rec["model"] = model_id(rec["url"])
            except (OSError, ValueError, KeyError, IndexError):
                pass
            return
        time.sleep(1.0)
    rec["status"] = "not-ready"
    rec["error"] = "not ready before the start timeout"


def cmd_start(label: str, cpu: bool) -> int:
    from tests.gpu.servers import SERVERS

    work = work_dir(label)
    if (work / "state.json").exists():
        cmd_stop(label)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ctx = Context(label=label, gpu=not cpu, work=work, storage_root=_storage_root(label, work, not cpu),
                  started_at=_iso())
    from repro.server.launcher import has_gpu

    if ctx.gpu and not has_gpu():
        say("no GPU visible here: use --cpu")
        return 2
    t0 = time.monotonic()
    machine: dict[str, Any] = {}
    probe = threading.Thread(target=lambda: machine.update(_machine()), daemon=True)
    probe.start()
    ctx.model = _build_model(ctx)
    say(f"model {ctx.model} ready after {time.monotonic() - t0:.0f} s")
    probe.join(150)
    ctx.machine = machine
    ctx.vllm_version = machine.get("vllm", label if label[:1].isdigit() else "?")
    say(f"vLLM {ctx.vllm_version}, torch {machine.get('torch')}, {machine.get('gpus') or 'no GPU'}")
    shutil.rmtree(ctx.storage_root, ignore_errors=True)
    for d in (ctx.results, ctx.artifacts, ctx.work / "markers", ctx.storage_root):
        d.mkdir(parents=True, exist_ok=True)
    names = [s.name for s in SERVERS if s.needed(ctx)]
    recs = {}
    for n in names:
        try:
            recs[n] = _launch(ctx, n)
        except Exception as exc:  # noqa: BLE001 - a server that cannot start fails its steps, not the others
            recs[n] = {"name": n, "status": "launch-failed", "error": f"{type(exc).__name__}: {exc}"}
    say(f"launched {', '.join(names)}; waiting for them (at most {ctx.profile.startup_timeout:.0f} s)")
    deadline = time.monotonic() + ctx.profile.startup_timeout
    threads = [threading.Thread(target=_wait_ready, args=(ctx, r, deadline)) for r in recs.values() if "_proc" in r]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctx.servers = recs
    ctx.save()
    for r in recs.values():
        say(f"  {r['name']:<7} {r.get('status')} {r.get('url', '')} after {r.get('ready_s', '-')} s "
            f"{r.get('error', '')}")
    ok = all(r.get("status") == "ready" for r in recs.values())
    say(f"start done in {time.monotonic() - t0:.0f} s: {'all ready' if ok else 'NOT all ready'}; state {ctx.state_path}")
    return 0 if ok else 1


# -- run ------------------------------------------------------------------------------------------
def lanes() -> list[Path]:
    return sorted(HERE.glob("test_*.py"))


def cmd_run(label: str, out: Path, budget: float | None = None) -> int:
    ctx = Context.load(work_dir(label) / "state.json")
    budget = budget or ctx.profile.run_budget
    t0 = time.monotonic()
    env = child_env(ctx)
    env.update(REPRO_GPU="1", REPRO_GPU_CHECK_STATE=str(ctx.state_path),
               REPRO_GPU_OUT=str(ctx.artifacts / "figures"))  # where steps written for the launcher put figures
    procs = {}
    for f in lanes():
        lane = f.stem[len("test_"):]
        argv = [sys.executable, "-m", "pytest", str(f), "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider",
                "-o", "addopts=", f"--junitxml={ctx.results / f'junit-{lane}.xml'}", "-o", "junit_family=xunit2"]
        log = open(ctx.results / f"pytest-{lane}.log", "wb")
        procs[lane] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       cwd=str(REPO), env=env, start_new_session=True)
        log.close()
    say(f"lanes {', '.join(procs)} running (budget {budget:.0f} s)")
    deadline = t0 + budget
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
        time.sleep(1.0)
    for lane, p in procs.items():
        if p.poll() is None:
            say(f"lane {lane} still running at the budget: stopped")
            (ctx.results / f"pytest-{lane}.log").open("a").write(f"\n[gpu-check] lane stopped at the {budget:.0f} s "
                                                                   "budget\n")
            stop_group(p.pid, grace=5.0)
    say(f"lanes done after {time.monotonic() - t0:.0f} s; stopping the servers")
    cmd_stop(label)
    res = collect(ctx)
    code = pack(ctx, res, out)
    say(f"run done in {time.monotonic() - t0:.0f} s: {res['passed']} passed, {res['failed']} failed, "
        f"{res['skipped']} skipped; results in {out}")
    return code


def cmd_stop(label: str) -> None:
    path = work_dir(label) / "state.json"
    if not path.exists():
        return
    ctx = Context.load(path)

    def stop_one(r: dict[str, Any]) -> None:
        stop_group(int(r["pgid"]), grace=60.0 if r.get("watch") else 15.0)
        if r.get("watch"):  # the watchdog stops its server on SIGTERM; anything it left is stopped here
            try:
                events = [json.loads(x) for x in Path(r["events"]).read_text().splitlines() if x.strip()]
            except (OSError, ValueError):
                events = []
            for e in events:
                if e.get("event") == "start" and e.get("pgid"):
                    stop_group(int(e["pgid"]))

    threads = [threading.Thread(target=stop_one, args=(r,)) for r in ctx.servers.values() if r.get("pgid")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shutil.rmtree(ctx.storage_root, ignore_errors=True)


# -- results --------------------------------------------------------------------------------------
def _junit(path: Path, lane: str) -> list[dict[str, Any]]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return [{"lane": lane, "name": f"(lane {lane})", "outcome": "error", "seconds": None,
                 "message": f"no junit report ({path.name}): the lane did not finish"}]
    out = []
    for tc in root.iter("testcase"):
        outcome, msg = "passed", ""
        for kind in ("failure", "error", "skipped"):
            el = tc.find(kind)
            if el is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                msg = (el.get("message") or el.text or "").strip().splitlines()[0][:400] if (el.get("message") or
                                                                                            el.text) else ""
                break
        out.append({"lane": lane, "name": tc.get("name", "?"), "outcome": outcome,
                    "seconds": round(float(tc.get("time") or 0), 1), "message": msg})
    return out


def step_file(ctx: Context, lane: str, name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return ctx.results / "steps" / f"{lane}__{safe}.json"


def collect(ctx: Context) -> dict[str, Any]:
    steps = []
    seen: set[Path] = set()
    for f in lanes():
        lane = f.stem[len("test_"):]
        for s in _junit(ctx.results / f"junit-{lane}.xml", lane):
            sf = step_file(ctx, lane, s["name"])
            seen.add(sf)
            try:
                s.update(json.loads(sf.read_text()))
            except (OSError, ValueError):
                pass
            steps.append(s)
    for sf in sorted((ctx.results / "steps").glob("*.json")):  # steps of a lane stopped at the budget
        if sf not in seen:
            lane, _, name = sf.stem.partition("__")
            s = {"lane": lane, "name": name, "outcome": "error", "seconds": None,
                 "message": "stopped at the run budget before it finished"}
            s.update(json.loads(sf.read_text()))
            steps.append(s)
    counts = {k: sum(1 for s in steps if s["outcome"] == k) for k in ("passed", "failed", "error", "skipped")}
    servers = {n: {k: r.get(k) for k in ("purpose", "status", "ready_s", "error", "command")}
               for n, r in ctx.servers.items()}
    res = {"schema": SCHEMA, "version": VERSION, "label": ctx.label, "gpu": ctx.gpu, "vllm": ctx.vllm_version,
           "machine": ctx.machine, "started_at": ctx.started_at, "finished_at": _iso(), "model": ctx.model,
           "profile": asdict(ctx.profile), "servers": servers, "steps": steps,
           "passed": counts["passed"], "failed": counts["failed"] + counts["error"], "skipped": counts["skipped"]}
    (ctx.results / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (ctx.results / "results.md").write_text(markdown(res))
    return res


def _cell(v: Any) -> str:
    if isinstance(v, float):
        v = f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"# GPU check: vLLM {res['vllm']} ({res['label']})", "",
             f"{_iso()}; {', '.join(m.get('gpus') or ['no GPU'])}; {m.get('cpus')} CPUs; torch {m.get('torch')}; "
             f"python {m.get('python')}; model {Path(res['model']).name} "
             f"({res['profile']['hidden']}x{res['profile']['layers']}, {res['profile']['dtype']}).", "",
             f"**{res['passed']} passed, {res['failed']} failed, {res['skipped']} skipped.**", "",
             "| server | purpose | ready after |", "|---|---|---|"]
    for n, s in res["servers"].items():
        ready = (f"{_cell(s.get('ready_s'))} s" if s.get("status") == "ready"
                 else f"{_cell(s.get('status'))}: {_cell(s.get('error'))}")
        lines.append(f"| {n} | {_cell(s.get('purpose'))} | {ready} |")
    lines += ["", "| lane | step | result | s | figures |", "|---|---|---|---|---|"]
    for s in res["steps"]:
        figs = "; ".join(f"{k}={_cell(v)}" for k, v in (s.get("figures") or {}).items())
        result = s["outcome"] + (f": {_cell(s['message'])}" if s.get("message") and s["outcome"] != "passed" else "")
        lines.append(f"| {s['lane']} | {s['name']} | {result} | {_cell(s.get('seconds'))} | {figs} |")
    tables: dict[str, list[dict[str, Any]]] = {}
    for s in res["steps"]:
        for t, rows in (s.get("tables") or {}).items():
            tables.setdefault(t, []).extend(rows)
    for t, rows in tables.items():
        cols = list(dict.fromkeys(k for r in rows for k in r))
        lines += ["", f"### {t}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _tail(src: Path, dst: Path, max_bytes: int) -> None:
    with open(src, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - max_bytes))
        data = f.read()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)


def pack(ctx: Context, res: dict[str, Any], out: Path) -> int:
    """OUT/gpu-check-LABEL.tar.gz (under 15 MiB: server logs are cut first, then large artifacts dropped) and
    OUT/gpu-check-LABEL.md."""
    out.mkdir(parents=True, exist_ok=True)
    name = f"gpu-check-{ctx.label}"
    stage = ctx.work / "pack" / name
    shutil.rmtree(stage.parent, ignore_errors=True)
    shutil.copytree(ctx.results, stage / "results")
    if ctx.artifacts.exists():
        shutil.copytree(ctx.artifacts, stage / "artifacts")
    shutil.copy(ctx.state_path, stage / "state.json")
    tar = out / f"{name}.tar.gz"
    for attempt, log_budget in enumerate((2_000_000, 500_000, 100_000, 20_000, 20_000, 20_000, 20_000, 20_000)):
        logs = stage / "server-logs"
        shutil.rmtree(logs, ignore_errors=True)
        for r in ctx.servers.values():
            d = Path(r.get("dir", "/nonexistent"))
            for f in sorted(d.rglob("*.log")) + sorted(d.glob("*.out")):
                _tail(f, logs / r["name"] / f.relative_to(d), log_budget)
        with tarfile.open(tar, "w:gz") as tf:
            tf.add(stage, arcname=name)
        if tar.stat().st_size <= OUT_LIMIT:
            break
        if attempt >= 3:  # logs are small now: drop the largest artifact that is not a figure
            big = sorted((p for p in stage.rglob("*") if p.is_file() and p.suffix != ".json" and
                          p.stat().st_size > 200_000), key=lambda p: -p.stat().st_size)
            if big:
                (stage / "results" / "dropped-to-fit.txt").open("a").write(f"{big[0].relative_to(stage)}\n")
                big[0].unlink()
    shutil.copy(ctx.results / "results.md", out / f"{name}.md")
    return 0 if res["failed"] == 0 else 1


@dataclass
class StartedServer:
    """A server of the GPU check seen the way a VllmServer is (url, settings, command, alive()), for steps
    written against the kit's launcher (tests/gpu/test_fp8_connector.py)."""

    name: str
    url: str
    settings: Any  # ServerSettings
    command: list[str]
    pgid: int
    log_path: Path

    def alive(self) -> bool:
        from repro.watch.servers import group_pids

        return bool(group_pids(self.pgid))


def started_server(ctx: Context, name: str) -> StartedServer | None:
    """The check's server `name` when it started and is ready (None: not started for this version, or not ready)."""
    from repro.scenario import ServerSettings

    rec = ctx.servers.get(name)
    if not rec or rec.get("status") != "ready" or "settings" not in rec:
        return None
    return StartedServer(name, rec["url"], ServerSettings(**rec["settings"]), list(rec.get("command") or []),
                         int(rec["pgid"]), Path(rec["log"]))


# -- markers between lanes ------------------------------------------------------------------------
def mark(ctx: Context, name: str) -> None:
    (ctx.work / "markers" / name).write_text(_iso() + "\n")


def wait_marker(ctx: Context, name: str, timeout: float) -> float | None:
    """Seconds waited for another lane's marker, or None when it did not come within `timeout`."""
    t0 = time.monotonic()
    p = ctx.work / "markers" / name
    while not p.exists():
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(0.5)
    return round(time.monotonic() - t0, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["start", "run", "all", "stop"])
    ap.add_argument("label", help="the vLLM version under test, e.g. 0.20.2")
    ap.add_argument("out", nargs="?", default=None, help="where the two result files go (run, all)")
    ap.add_argument("--cpu", action="store_true", help="against a CPU vLLM: every step but the CUDA-only checks")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the lanes of `run`")
    a = ap.parse_args(argv)
    if a.command in ("run", "all") and not a.out:
        ap.error("run and all need OUT")
    if a.command == "stop":
        cmd_stop(a.label)
        return 0
    if a.command in ("start", "all"):
        rc = cmd_start(a.label, a.cpu)
        if a.command == "start":
            return rc
    return cmd_run(a.label, Path(a.out), a.budget)


if __name__ == "__main__":
    sys.exit(main())
