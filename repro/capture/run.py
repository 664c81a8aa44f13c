"""`capture(CaptureRequest) -> Bundle`: the one entry point of the capture stage.

Order of work (the stacks come first: they are the evidence that decays):

1. find the server's processes (by title, from the root pid, a container, or the URL's port);
2. start `vllm.collect_env` in the background (time-boxed, the slow part);
3. /metrics "before";
4. ``settings.samples`` rounds ``settings.interval`` s apart; in each round every
   process is sampled at the same time (one thread per process): /proc CPU time,
   state and wchan of each thread, py-spy ``--json`` (fallback ``--nonblocking``),
   then py-spy ``--native``; every call under a hard timeout, the whole phase
   inside ``settings.stacks_budget`` (15 s by default); nothing is redacted or
   written until the samples are in (the secret scanner loads meanwhile);
5. /metrics "after", the log tail and last stats lines, command line and
   environment (redacted), scenario, detector events, GPU and storage state;
6. analysis (verdicts, signature), timeline plot, summary, the last secret check
   of every file read back, manifest, tarball (not packed when a file cannot be read).

Nothing here raises for a failing collector: failures go to errors.txt and the
manifest, and the rest of the bundle is still written. It raises
:class:`~repro.errors.UsageError` only when ``req.out_dir`` already holds a
bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from repro.analyze.stacks import analyze_bundle_dir
from repro.capture import context, docker as docker_mod, gpu as gpu_mod, procfs, pyspy
from repro.bundle.manifest import MANIFEST
from repro.bundle.writer import BundleWriter
from repro.secrets.envpolicy import EnvPolicy
from repro.secrets.redact import WITHHELD, Redactor, argv_secrets, secret_name
from repro.secrets.secretscan import Scanner
from repro.capture.request import Bundle, CaptureRequest
from repro.errors import ReproError, UsageError
from repro.formats import (ANALYSIS_FORMAT, DETECTION_FORMAT, PROCESSES_FORMAT, SERVER_ENV_FORMAT, STORAGE_FORMAT,
                           stamp)
from repro.server import procs as procs_mod
from repro.server.attached import output_file, url_is_local
from repro.server.procs import port_owner


def _known_secrets(req: CaptureRequest, env: dict[str, str] | None, root: int | None = None) -> list[str]:
    """Exact secret values to scrub everywhere: the API key, secret-named env values, secret flag values."""
    vals = [req.api_key or ""]
    for argv in (req.server_command, procs_mod.proc_cmdline(root) if root else None):
        vals += argv_secrets(argv or [])
    for e in (env or {}, req.server_env or {}):
        vals += [v for k, v in e.items() if secret_name(k) and len(v) >= 8 and not v.startswith("/")]
    return [v for v in vals if v]


def _container(req: CaptureRequest, w: BundleWriter) -> docker_mod.Container | None:
    """`docker inspect` of --docker NAME (which container, which image, its init's host pid), or None."""
    if not req.docker:
        return None
    t0 = time.monotonic()
    try:
        c = docker_mod.running(req.docker)
    except ReproError as exc:  # recorded, capture goes on
        w.error("docker", str(exc), exc.help)
        return None
    w.write_json("context/docker-inspect.json", c.raw)
    w.record("docker inspect", command=docker_mod.inspect_command(req.docker), exit_code=0,
             duration=time.monotonic() - t0, output="context/docker-inspect.json", container=c.describe())
    return c


def _discover(req: CaptureRequest, w: BundleWriter,
              container: docker_mod.Container | None = None) -> tuple[list[procs_mod.VllmProcess], int | None]:
    root = req.root_pid
    if req.docker and root is None:
        if container is None:
            return [], None  # the reason is in errors.txt already
        root = container.pid
    if root is None and req.url:
        root = port_owner(req.url)
        if root is None and url_is_local(req.url):  # nothing listens here: the server is gone, not elsewhere
            w.error("processes", f"nothing on this machine listens on {req.url} (connection refused): the server "
                                 "is gone, no stacks could be taken",
                    "The server's log (context/server.log.tail) holds why it went away.")
            return [], None
    if root is not None:
        try:
            root = procs_mod.find_server_root(root)
            return procs_mod.find_vllm_processes(root), root
        except psutil.NoSuchProcess:
            w.error("processes", f"process {root} does not exist (any more): no stacks could be taken",
                    "Check the pid with `ps -ef | grep VLLM`; pass the server's root pid with --pid.")
            return [], root
    found = procs_mod.find_all_vllm_processes()
    if not found:
        w.error("processes", "no vLLM process found on this machine (by title VLLM::*)",
                "Pass the server's pid with --pid, or its container with --docker.")
    return found, None


class _Sampler:
    """Takes the stack samples of all processes, round by round, under one deadline."""

    def __init__(self, req: CaptureRequest, w: BundleWriter, processes: list[procs_mod.VllmProcess]) -> None:
        s = req.settings
        self.req, self.w, self.processes = req, w, processes
        self.samples = max(1, int(s.samples))
        self.interval = max(0.0, float(s.interval))
        self.budget = max(float(s.stacks_budget), (self.samples - 1) * self.interval + 3.0)
        exe = pyspy.find_pyspy(s.pyspy)
        use_exec = bool(req.docker) and (s.docker_pyspy == "exec" or (s.docker_pyspy == "auto" and os.geteuid() != 0))
        # Root on the host dumps a container's processes inside its namespaces (native frames work there).
        enter = s.docker_pyspy in ("auto", "nsenter") and pyspy.can_enter_namespaces()
        self.spy = pyspy.PySpy(exe=exe, docker=req.docker if use_exec else None, enter_namespaces=enter)
        self.failures: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        self.metric_samples: list[dict[str, Any]] = []
        self.native_cost: dict[int, float] = {}  # pid -> seconds the last --native dump took
        self.native_skipped = 0
        self.unpaused = 0  # samples read with --nonblocking after the blocking dump failed

    def _fail(self, kind: str, msg: str) -> None:
        with self.lock:
            self.failures.setdefault(kind, []).append(msg)

    def _pid_for_spy(self, p: procs_mod.VllmProcess) -> int:
        if self.spy.docker:
            return procfs.nspid(p.pid) or p.pid
        return p.pid

    def _native_fits(self, p: procs_mod.VllmProcess, next_round: float | None) -> bool:
        """A --native dump (slow: 3-5 s for a busy Worker with many threads, measured here) is taken when it
        should end before the next round's JSON dump is due, so the samples stay on schedule; the last round
        always takes one (the budget permitting). Skips are counted in the manifest."""
        if next_round is None:
            return True
        cost = self.native_cost.get(p.pid)
        if cost is None or time.monotonic() + cost < next_round:
            return True
        with self.lock:
            self.native_skipped += 1
        return False

    def _one(self, k: int, p: procs_mod.VllmProcess, deadline: float, next_round: float | None = None) -> None:
        rel = f"stacks/{p.label}-{p.pid}"
        s = self.req.settings
        sample: dict[str, Any] = {"k": k, "pid": p.pid, "label": p.label, "t": time.time()}
        sample["procfs"] = procfs.threads(p.pid)
        if "error" in sample["procfs"]:
            self._fail("gone", f"{p.label} (pid {p.pid}): {sample['procfs']['error']}")
        if not self.spy.available:
            sample["error"] = "py-spy not found"
            self._fail("missing", "py-spy not found")
        else:
            left = deadline - time.monotonic()
            if left <= 0.5:
                sample["error"] = "skipped: the stack budget was used up"
                self._fail("budget", f"{p.label} sample {k}: skipped (stack budget of {self.budget:.0f} s used up)")
            else:
                threads, calls = self.spy.dump_json(self._pid_for_spy(p), min(s.pyspy_timeout, left))
                sample["threads"] = threads
                sample["mode"] = calls[-1].mode if threads is not None else None
                if threads is not None and len(calls) > 1:
                    with self.lock:
                        self.unpaused += 1
                for c in calls:
                    self.w.record(f"py-spy {c.mode} {p.label} #{k}", command=c.command, exit_code=c.exit_code,
                                  duration=c.duration, timed_out=c.timed_out,
                                  output=f"{rel}/sample-{k}.json" if c is calls[-1] else None, error=c.error,
                                  process=p.label, pid=p.pid, sample=k)
                    if c.error:
                        self._fail(c.kind or "failed", f"{p.label} (pid {p.pid}) sample {k}, {c.mode}: {c.error}")
                if threads is None:
                    sample["error"] = calls[-1].error
                left = deadline - time.monotonic()
                if s.native and threads is not None and left > 0.5 and self._native_fits(p, next_round):
                    c = self.spy.dump_native(self._pid_for_spy(p), min(s.pyspy_timeout, left))
                    with self.lock:
                        self.native_cost[p.pid] = c.duration
                    out = f"{rel}/sample-{k}.native.txt"
                    self.w.write_text(out, c.stdout if c.stdout.strip() else f"(no output: {c.error})\n")
                    self.w.record(f"py-spy native {p.label} #{k}", command=c.command, exit_code=c.exit_code,
                                  duration=c.duration, timed_out=c.timed_out, output=out, error=c.error,
                                  process=p.label, pid=p.pid, sample=k)
                    if c.error:
                        self._fail("native", f"{p.label} (pid {p.pid}) sample {k}, native: {c.error}")
        sample["t_done"] = time.time()
        self.w.write_json(f"{rel}/sample-{k}.json", sample)

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        deadline = t0 + self.budget
        with ThreadPoolExecutor(max_workers=max(1, len(self.processes)) + 1) as pool:
            for k in range(self.samples):
                wait = t0 + k * self.interval - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if time.monotonic() >= deadline:
                    break
                next_round = t0 + (k + 1) * self.interval if k + 1 < self.samples else None
                futs = [pool.submit(self._one, k, p, deadline, next_round) for p in self.processes]
                if self.req.url and k > 0:
                    futs.append(pool.submit(self._metrics_point))
                for f in futs:
                    f.result()
        return {"duration": round(time.monotonic() - t0, 3), "budget": self.budget, "samples": self.samples,
                "interval": self.interval, "processes": len(self.processes),
                "native_skipped_to_keep_schedule": self.native_skipped,
                "pyspy": self.spy.exe if not self.spy.docker else f"docker exec {self.spy.docker} py-spy",
                "pyspy_in_namespaces": sorted(p.pid for p in self.processes if self.spy.in_namespaces(p.pid))}

    def _metrics_point(self) -> None:
        assert self.req.url
        f = context.fetch_metrics(self.req.url, self.req.api_key, timeout=3)
        if f.ok:
            with self.lock:
                self.metric_samples.append({"t": time.time(), **context.key_metrics(f.text)})


def _collect_env_job(req: CaptureRequest, root: int | None, env: dict[str, str] | None) -> dict[str, Any]:
    """collect-env with the server's Python; when it fails: versions and pip freeze (also slow: time-boxed)."""
    s = req.settings
    if not s.collect_env:
        return {"skipped": True}
    wrap = _container_wrap(root)
    python = procs_mod.server_python(root, req.server_command, fs_root=f"/proc/{root}/root" if wrap else "")
    res: dict[str, Any] = {"python": python}
    if python:
        # A container's Python runs inside the container (its files are not this host's); its output is not
        # cached: the cache key reads the interpreter's files here.
        cache = None if s.collect_env_cache is None or wrap else (
            Path(s.collect_env_cache) if s.collect_env_cache else context.default_cache_dir())
        ce = context.collect_env(python, s.collect_env_timeout, env, cache_dir=cache, wrap=wrap)
        res["collect_env"] = ce
        if ce["ok"]:
            return res
    res["fallback"] = context.fallback_env(python, min(10.0, s.collect_env_timeout), wrap=wrap)  # 20 s at most
    return res


def _container_wrap(root: int | None) -> list[str] | None:
    """`nsenter ... --` to run a command inside the namespaces of a container's process (None: run it here)."""
    if root is None or not procfs.in_other_mount_namespace(root) or not pyspy.can_enter_namespaces():
        return None
    return [shutil.which("nsenter") or "nsenter", "--target", str(root), "--pid", "--mount", "--"]


def capture(req: CaptureRequest) -> Bundle:
    """Take the evidence of a stall and write the bundle `req.out_dir` (+ `<name>.tar.gz` beside it)."""
    t_start = time.monotonic()
    out = Path(req.out_dir)
    if out.exists() and (out / MANIFEST).exists():
        raise UsageError(f"{out} already holds a bundle: choose another --out")
    s = req.settings

    # The server's environment is read first: its secret values are scrubbed from every file.
    root_guess = req.root_pid
    env_read, env_err = (context.proc_environ(root_guess) if root_guess else (None, None))
    scanner = Scanner(library=s.secret_scan)
    scanner.warm()  # detect-secrets loads while the stacks are taken
    redactor = Redactor(hosts=s.redact_hosts, extra_values=_known_secrets(req, env_read, root_guess),
                        env_policy=EnvPolicy.from_settings(s.env_allow), scanner=scanner)
    try:
        w = BundleWriter(out, redactor, s.size_budget)
    except OSError as exc:
        raise UsageError(f"cannot create the bundle directory {out} ({exc.strerror or exc})") from None

    metric_samples: list[dict[str, Any]] = []
    with w.deferred():  # nothing is redacted or written until the stacks are in
        container = _container(req, w)
        if container is not None:  # the container's configured environment: its secrets are scrubbed everywhere too
            redactor.add_known(_known_secrets(req, docker_mod.env_of(container)))
        processes, root = _discover(req, w, container)
        if root is not None and root != root_guess:
            env_read, env_err = context.proc_environ(root)
            redactor.add_known(_known_secrets(req, env_read, root))
        server_env = req.server_env or env_read

        env_result: dict[str, Any] = {}
        env_thread = threading.Thread(target=lambda: env_result.update(_collect_env_job(req, root, server_env)),
                                      name="repro-collect-env", daemon=True)
        env_thread.start()

        _metrics_snapshot(w, req, "before", metric_samples)

        sampler = _Sampler(req, w, processes)
        smi = gpu_mod.find_smi()
        gpu_sampler = gpu_mod.GpuSampler(smi).start() if smi else None  # GPU readings through the stack phase
        try:
            stacks_info = sampler.run() if processes else {"duration": 0.0, "processes": 0, "samples": 0}
        finally:
            gpu_samples = gpu_sampler.stop() if gpu_sampler is not None else []
        # Any secret in the server's environment (kept or withheld) is masked wherever it appears.
        redactor.add_known(redactor.env_secrets(server_env or {}))
    metric_samples += sampler.metric_samples
    _report_stack_failures(w, sampler)

    _metrics_snapshot(w, req, "after", metric_samples)
    if metric_samples:
        w.write_text("context/metrics-samples.jsonl", "".join(json.dumps(m) + "\n" for m in metric_samples))

    proc_records = _write_processes(w, processes)
    server_cmd = _write_server(w, req, root, server_env, env_err)
    stats_lines = _write_log(w, req, root)
    _write_run_context(w, req)
    storage = _write_storage(w, req)
    clients_view = _write_clients(w, req)
    _write_gpu(w, gpu_samples, gpu_sampler.errors if gpu_sampler is not None else [])

    remaining = max(0.0, s.collect_env_timeout + 25.0 - (time.monotonic() - t_start))
    env_thread.join(remaining)
    _write_env(w, env_result, env_thread.is_alive())

    analysis = analyze_bundle_dir_safe(w, proc_records)
    from repro.analyze import report  # late: matplotlib is imported only when a bundle is finished

    plot_ok = report.write_timeline(w, req, metric_samples, analysis)
    total = round(time.monotonic() - t_start, 3)
    extra = {
        "reason": req.reason,
        "repro_command": w.redactor.argv(req.repro_command) if req.repro_command else None,
        "server_command": w.redactor.argv(server_cmd) if server_cmd else None,
        "stall_since": report.stall_since(req),
        "target": {"root_pid": root, "url": req.url, "docker": req.docker, "log_path": str(req.log_path)
                   if req.log_path else None, "storage_path": _storage_path(req),
                   "container": container.describe() if container is not None else None},
        "settings": {k: v for k, v in vars(s).items()},
        "stacks": stacks_info,
        "duration": total,
        "detection": req.detection,
        "analysis": {k: analysis.get(k) for k in ("verdict", "stuck_process", "stuck_frame", "signature")},
        "stats_lines": len(stats_lines),
        "storage": {k: storage.get(k) for k in ("files_waiting", "bytes_waiting", "oldest_age_s")} if storage else None,
        "timeline_png": "timeline.png" if plot_ok else None,
        "clients": clients_view,
    }
    w.write_text("summary.md", report.summary_md(w.dir.name, req, analysis, stacks_info, stats_lines,
                                                 metric_samples, storage, w.errors))
    manifest, tar = w.finish(extra)
    return Bundle(dir=w.dir, tarball=tar, manifest=manifest, verdict=analysis,
                  errors=[f"{e['what']}: {e['message']}" for e in w.errors], not_packed=w.not_packed)


def _metrics_snapshot(w: BundleWriter, req: CaptureRequest, when: str, samples: list[dict[str, Any]]) -> None:
    """GET /metrics into context/metrics-<when>.txt; its key values join `samples` (for the plot and summary)."""
    if not req.url:
        return
    f = context.fetch_metrics(req.url, req.api_key)
    rel = f"context/metrics-{when}.txt"
    w.write_text(rel, f.text or f"(failed: {f.error})\n")
    w.record(f"metrics {when}", command=f"GET {req.url}/metrics", exit_code=f.status, duration=f.duration,
             output=rel, error=f.error)
    if f.ok:
        samples.append({"t": time.time(), **context.key_metrics(f.text)})
    else:
        w.error(f"metrics {when}", f.error or "failed", "Check --url: /metrics must be reachable from here.")


def analyze_bundle_dir_safe(w: BundleWriter, proc_records: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        analysis = analyze_bundle_dir(w.dir)
    except Exception as exc:  # noqa: BLE001 - analysis must not cost us the bundle
        w.error("analysis", f"analysis failed: {exc!r}")
        analysis = {"verdict": "unknown", "signature": None, "processes": [], "stuck_threads": []}
    w.write_json("analysis.json", stamp(ANALYSIS_FORMAT, analysis))
    return analysis


def _report_stack_failures(w: BundleWriter, sampler: _Sampler) -> None:
    f = sampler.failures
    if "missing" in f:
        w.error("py-spy", "py-spy not found: no stacks were taken", pyspy.PYSPY_MISSING_HELP)
    if "ptrace" in f:
        unpaused = (f"; {sampler.unpaused} sample(s) were read without pausing the process (--nonblocking, no "
                    f"native frames)" if sampler.unpaused else "")
        w.error("py-spy", f"ptrace refused for {len(f['ptrace'])} dump(s), e.g. {f['ptrace'][0]}{unpaused}",
                pyspy.ptrace_help())
    for kind, help_text in (("gone", "The process exited while it was sampled: the server may have died; see "
                                     "context/server.log.tail."),
                            ("timeout", "py-spy hung and was killed; the non-blocking fallback was tried. "
                                        "A process stuck in the kernel (state D) can cause this."),
                            ("failed", ""), ("native", "Native stacks are optional; the Python stacks were taken."),
                            ("budget", "Raise --samples/--interval less, or the stack budget (stacks_budget).")):
        for msg in f.get(kind, [])[:20]:
            w.error(f"py-spy ({kind})", msg, help_text)
            help_text = ""


def _write_processes(w: BundleWriter, processes: list[procs_mod.VllmProcess]) -> list[dict[str, Any]]:
    recs = []
    for p in processes:
        d = p.to_dict()
        d["title"] = " ".join(w.redactor.argv(p.title.split()))
        d["stacks_dir"] = f"stacks/{p.label}-{p.pid}"
        try:
            pp = psutil.Process(p.pid)
            d["status"] = pp.status()
            d["create_time"] = pp.create_time()
            d["num_threads"] = pp.num_threads()
            d["rss_bytes"] = pp.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            d["status"] = "gone"
        recs.append(d)
    w.write_json("processes.json", stamp(PROCESSES_FORMAT, {"processes": recs}))
    return recs


def _write_server(w: BundleWriter, req: CaptureRequest, root: int | None, env: dict[str, str] | None,
                  env_err: str | None) -> list[str] | None:
    cmd = req.server_command or (procs_mod.proc_cmdline(root) if root else None)
    if cmd:
        w.write_text("context/server-command.txt", " ".join(w.redactor.argv(cmd)) + "\n")
        w.record("server command", command=None, exit_code=0, duration=0.0, output="context/server-command.txt",
                 source="request" if req.server_command else f"/proc/{root}/cmdline")
    if env is not None:
        shown = w.redactor.env(env)
        w.write_json("context/server-env.json", {
            "schema": SERVER_ENV_FORMAT.schema, "version": SERVER_ENV_FORMAT.version,
            "source": "request" if req.server_env else f"/proc/{root}/environ",
            "allow_list": w.redactor.env_policy.describe(),
            "variables": {k: v for k, v in shown.items() if v != WITHHELD},
            "withheld": [k for k, v in shown.items() if v == WITHHELD]})
        w.record("server environment", command=None, exit_code=0, duration=0.0, output="context/server-env.json",
                 source="request" if req.server_env else f"/proc/{root}/environ")
    elif env_err:
        w.error("server environment", env_err, "Run repro as the server's user or as root.")
    return cmd


def _docker_logs(w: BundleWriter, name: str, what: str) -> str | None:
    """`docker logs --tail N NAME` (both streams), or None (recorded as an error) when it fails."""
    command = docker_mod.logs_command(name)
    rc, out, err, dt, timed_out = pyspy.run_with_timeout(command, 30.0)
    if rc != 0 or timed_out:
        w.record(what, command=command, exit_code=rc, duration=dt, timed_out=timed_out,
                 output=None, error=(err.strip().splitlines() or ["failed"])[-1])
        w.error(what, f"`{' '.join(command)}` failed", "Pass the log with --log-file.")
        return None
    # vLLM logs to stderr: docker keeps both streams; order between them is approximate.
    return out + err


def _write_log(w: BundleWriter, req: CaptureRequest, root: int | None = None) -> list[str]:
    """The log tail and the last stats lines: from --log-file, else `docker logs` of the container, else the
    file the server's stdout/stderr go to (/proc/PID/fd/1, 2) when it is a regular file."""
    t0 = time.monotonic()
    if req.log_path and req.docker:  # the container's own log too: what its entrypoint printed
        text = _docker_logs(w, req.docker, "container log tail")
        if text is not None:
            tail, _, info = context.tail_and_stats(text, req.settings.log_tail_bytes)
            w.write_text("context/container.log.tail", tail)
            w.record("container log tail", command=docker_mod.logs_command(req.docker), exit_code=0,
                     duration=time.monotonic() - t0, output="context/container.log.tail", **info)
            t0 = time.monotonic()
    log_path, found = req.log_path, None
    if not log_path and not req.docker and root is not None:
        path, found = output_file(root)
        if path is None:
            w.error("server log", found)
        log_path = Path(path) if path else None
    if log_path:
        command: list[str] | str = f"tail {log_path}"
        try:
            tail, stats, info = context.read_log_tail(Path(log_path), req.settings.log_tail_bytes)
        except OSError as exc:
            w.error("server log", f"cannot read {log_path}: {exc.strerror or exc}")
            return []
        if found:
            info["found_as"] = found
    elif req.docker:
        command = docker_mod.logs_command(req.docker)
        text = _docker_logs(w, req.docker, "server log tail")
        if text is None:
            return []
        tail, stats, info = context.tail_and_stats(text, req.settings.log_tail_bytes)
    else:
        return []
    w.write_text("context/server.log.tail", tail)
    w.write_text("context/stats-lines.txt", "\n".join(stats) + ("\n" if stats else "(no stats line in the log)\n"))
    w.record("server log tail", command=command, exit_code=0, duration=time.monotonic() - t0,
             output="context/server.log.tail", **info)
    return [w.redactor.text(s) for s in stats]


def _write_run_context(w: BundleWriter, req: CaptureRequest) -> None:
    if req.scenario is not None:
        w.write_json("context/scenario.json", req.scenario.to_dict(req.server_record))
    if req.events:
        w.write_text("context/events.jsonl", "".join(json.dumps(e, default=str) + "\n" for e in req.events))
    if req.detection is not None:
        w.write_json("context/detection.json", stamp(DETECTION_FORMAT, req.detection))


def _transfer(req: CaptureRequest) -> str:
    """file, or handle when the run's connector hands back handles into a store (Mooncake): no files to count."""
    out = ((req.server_record.connector if req.server_record else None) or {}).get("output") or {}
    return str(out.get("transfer") or "file")


def _write_clients(w: BundleWriter, req: CaptureRequest) -> dict[str, Any] | None:
    """context/clients.json: requests received and aborted (server log) beside the files still in the store."""
    from repro.capture import clients

    tail = w.dir / "context" / "server.log.tail"
    text = tail.read_text(errors="replace") if tail.is_file() else None
    t0 = time.monotonic()
    v = clients.view(text, _storage_path(req), _transfer(req))
    w.write_json("context/clients.json", v)
    w.record("clients seen by the server", command=None, exit_code=0, duration=time.monotonic() - t0,
             output="context/clients.json")
    req_part, store_part = v.get("requests") or {}, v.get("store") or {}
    return {"received": req_part.get("received"), "aborted": req_part.get("aborted"),
            "store_files": store_part.get("data_files"), "of_aborted_requests": store_part.get("of_aborted_requests")}


def _storage_path(req: CaptureRequest) -> str | None:
    if _transfer(req) != "file":
        return None
    if req.storage_path:
        return req.storage_path
    scn = req.scenario
    if scn is not None and scn.storage_path:
        return scn.storage_path
    if scn is not None and scn.server.extract and scn.server.storage:
        return scn.server.storage
    return None


def _write_storage(w: BundleWriter, req: CaptureRequest) -> dict[str, Any] | None:
    path = _storage_path(req)
    if not path and _transfer(req) != "file":  # say why there is no census, never a census of nothing
        w.write_json("context/storage.json", {"schema": STORAGE_FORMAT.schema, "version": STORAGE_FORMAT.version,
                                              "census": None, "why": "the connector hands back handles into a "
                                              "Mooncake store, not files: no storage directory to count"})
        return None
    if not path:
        return None
    t0 = time.monotonic()
    info = context.storage_census(path)
    if req.storage_accounting:  # what only the client knows: which files no response ever named
        info["accounting"] = req.storage_accounting
    w.write_json("context/storage.json", stamp(STORAGE_FORMAT, info))
    w.record("storage census", command=f"statvfs+walk {path}", exit_code=0 if "error" not in info else 1,
             duration=time.monotonic() - t0, output="context/storage.json", error=info.get("error"))
    if "error" in info:
        w.error("storage", info["error"])
    return info


def _write_gpu(w: BundleWriter, samples: list[dict[str, Any]] | None = None,
               sample_errors: list[str] | None = None) -> None:
    t0 = time.monotonic()
    g = context.nvidia(timeout=20.0)
    if not g["present"]:
        w.record("nvidia", command=None, exit_code=None, duration=time.monotonic() - t0, output=None,
                 skipped="no NVIDIA GPU on this machine")
        return
    if "smi" in g:
        sm = g["smi"]
        w.write_text("context/nvidia-smi.txt", sm["text"])
        w.record("nvidia-smi", command=sm["command"], exit_code=sm["exit_code"], duration=sm["duration"],
                 timed_out=sm["timed_out"], output="context/nvidia-smi.txt")
    if "xid" in g:
        x = g["xid"]
        w.write_text("context/xid.txt", "\n".join(x["lines"]) + "\n" if x["lines"] else "(no NVRM Xid lines)\n")
        w.record("kernel Xid lines", command=x["command"], exit_code=x["exit_code"], duration=x["duration"],
                 timed_out=x["timed_out"], output="context/xid.txt", error=x["error"])
    smi = gpu_mod.find_smi()
    if smi:
        t1 = time.monotonic()
        gj = gpu_mod.report(smi, (g.get("xid") or {}).get("lines") or [], samples or [])
        errors = list(gj.get("errors", [])) + sorted(set(sample_errors or []))[:5]
        w.write_json("context/gpu.json", gj)
        w.record("gpu telemetry", command=[smi, f"--query-gpu={','.join(gpu_mod.GPU_FIELDS)}",
                                           f"--query-compute-apps={','.join(gpu_mod.APP_FIELDS)}"],
                 exit_code=0 if not errors else 1, duration=time.monotonic() - t1, output="context/gpu.json",
                 samples=len(gj["samples"]), error="; ".join(errors) or None)
        if errors:
            w.error("gpu telemetry", errors[0], "Check `nvidia-smi` on this machine.")


def _write_env(w: BundleWriter, res: dict[str, Any], still_running: bool) -> None:
    if res.get("skipped"):
        import platform

        w.write_text("context/collect-env.txt", f"(collect-env disabled)\nplatform: {platform.platform()}\n")
        w.record("collect-env", command=None, exit_code=None, duration=0.0, output="context/collect-env.txt",
                 skipped="disabled (--no-collect-env)")
        return
    if still_running or not res:
        w.error("collect-env", "collect-env did not finish in time", "Raise collect_env_timeout.")
        return
    ce = res.get("collect_env")
    if ce:
        w.write_text("context/collect-env.txt", ce["text"])
        w.record("collect-env", command=ce["command"], exit_code=ce["exit_code"], duration=ce["duration"],
                 timed_out=ce["timed_out"], output="context/collect-env.txt", cached=ce.get("cached"),
                 error=None if ce["ok"] else (ce["stderr"].strip().splitlines() or ["failed"])[-1])
        if not ce["ok"]:
            w.error("collect-env", f"`{' '.join(ce['command'])}` failed or timed out "
                                   f"({'timed out' if ce['timed_out'] else 'exit ' + str(ce['exit_code'])}); "
                                   "platform, versions and pip freeze were collected instead")
    elif not res.get("python"):
        w.error("collect-env", "could not find the server's Python; platform and pip freeze of this Python used")
    fb = res.get("fallback")
    if fb:
        text = fb["text"]
        if not ce:
            w.write_text("context/collect-env.txt", text)
        else:
            w.write_text("context/versions.txt", text)
        w.write_text("context/pip-freeze.txt", fb["freeze"] or "(pip freeze failed)\n")
        w.record("versions + pip freeze", command=fb["commands"][1], exit_code=fb["exit_codes"][1],
                 duration=fb["duration"], timed_out=fb["timed_out"], output="context/pip-freeze.txt")
