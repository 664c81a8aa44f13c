"""Load-generator benchmarks for `repro stress`, side by side in one run, like for like.

Against benchmarks/fast_endpoint.py (a fresh one per measurement, on loopback), each client in
its own process:

* capacity (--only capacity): concurrency 256 (--capacity-concurrency), zero server latency,
  128-token prompts, max_tokens 1, and every request does the work a real one does: the endpoint
  writes a [128, 2, 128] float32 hidden-state file (128 KiB, under the .lock protocol) per
  request for every client. repro stress reads, verifies and deletes each file and records every
  request in requests.jsonl; `vllm bench serve` (which reads no files; its text prompts count as
  128 tokens, --text-tokens) and the bare aiohttp loop (benchmarks/bare_client.py: pool sized to
  the concurrency, nothing parsed or recorded: the upper bound) have the endpoint delete each file
  after writing it. Every client is given more work than the window can hold (repro and the bare
  loop run until stopped, `vllm bench serve` gets --vllm-bench-prompts prompts); a client that
  ends inside the window is marked "INVALID" in its row. Reported per client: requests/s, mean
  in flight at the endpoint and fidelity (in flight / concurrency), client CPU, and for repro the
  files verified and bad and the requests recorded; then the ratios repro / vllm bench serve and
  repro / bare loop.
* fidelity (--only fidelity): concurrency 32, 256, 1024 with 1024-token prompts, hidden-state
  files ([1024, 2, 128] float32, 1 MB) for every client (discarded by the endpoint for clients
  that read none) and a server latency of C/200 s (so the endpoint needs ~200 req/s): mean
  requests in flight at the endpoint / concurrency, for repro stress, `vllm bench serve`, the
  naive client that does the file work on its event loop (benchmarks/naive_client.py) and the
  bare loop.

A measurement window of --window seconds starts --warm seconds after the endpoint has answered
the client's second request (`vllm bench serve` sends one test prompt first, then generates
nothing more before its run); requests/s, in-flight (time-integral at the endpoint) and client CPU
(user+sys of the client process and its children, psutil) are all taken over that window only.
Each row also says what else ran on the machine: the load average before and after, and the
other processes that used the most CPU in the window.

    .venv/bin/python benchmarks/stress_client_bench.py --only capacity --out /dev/shm/repro-stress-bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
PY = sys.executable
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """The console script ``name`` beside this interpreter (a venv), else the first one on PATH (a --target install)."""
    here = BIN / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


#: clients that read the endpoint's files (for the others the endpoint writes and then deletes each one)
READS_FILES = ("repro", "naive")


#: endpoint processes (--endpoint-workers) and bare-loop processes (--bare-procs)
SETUP = {"endpoint_workers": 1, "bare_procs": 1}


def start_endpoint(port: int, latency: float, files: str | None, discard: bool = False,
                   text_tokens: int | None = None) -> subprocess.Popen[bytes]:
    cmd = [PY, str(HERE / "fast_endpoint.py"), "--port", str(port), "--latency", str(latency),
           "--workers", str(SETUP["endpoint_workers"])]
    if files:
        cmd += ["--files", files]
    if discard:
        cmd += ["--discard-files"]
    if text_tokens:
        cmd += ["--text-tokens", str(text_tokens)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(100):
        try:
            get(f"http://127.0.0.1:{port}/stats")
            return p
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise RuntimeError("fast endpoint did not start")


def cpu_of(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def thread_cpu(proc: psutil.Process) -> dict[int, float]:
    """tid -> user+sys CPU seconds so far, for the threads of ``proc``."""
    try:
        return {t.id: t.user_time + t.system_time for t in proc.threads()}
    except psutil.NoSuchProcess:
        return {}


def cores_by_thread(before: dict[int, float], after: dict[int, float], pid: int, dt: float) -> dict[str, float]:
    """Cores used in the window by the main thread (the event loop: its tid is the pid) and by all the other
    threads together (file checks, prompt building, ...; Python does not give the kernel its thread names)."""
    main = (after.get(pid, 0.0) - before.get(pid, 0.0)) / dt
    others = sum(cpu - before.get(tid, 0.0) for tid, cpu in after.items() if tid != pid) / dt
    return {"main": round(main, 3), "other_threads": round(others, 3), "threads": len(after)}


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """pid -> (short command line, user+sys CPU seconds so far) for every process we can read."""
    out: dict[int, tuple[str, float]] = {}
    for p in psutil.process_iter(["pid", "cmdline", "name", "cpu_times"]):
        t = p.info.get("cpu_times")
        if t is None:
            continue
        cmd = " ".join(p.info.get("cmdline") or []) or p.info.get("name") or "?"
        out[p.info["pid"]] = (cmd[:120], t.user + t.system)
    return out


def beside(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], ours: set[int],
           dt: float, top: int = 5) -> list[dict]:
    """The other processes that used the most CPU between two snapshots (share of one core)."""
    used = []
    for pid, (cmd, cpu) in after.items():
        if pid in ours:
            continue
        d = cpu - before.get(pid, (cmd, 0.0))[1]  # a process started inside the window: all of its CPU
        if d > 0.02 * dt:
            used.append({"pid": pid, "cmd": cmd, "cores": round(d / dt, 2)})
    return sorted(used, key=lambda u: -u["cores"])[:top]


def tree(proc: psutil.Process) -> set[int]:
    try:
        return {proc.pid, *(c.pid for c in proc.children(recursive=True))}
    except psutil.NoSuchProcess:
        return {proc.pid}


#: extra arguments for repro stress (--repro-args), e.g. to try a setting
REPRO_EXTRA: list[str] = []


def base_kind(kind: str) -> tuple[str, int | None]:
    """"repro-p4" -> ("repro", 4): a client of 4 processes (repro --client-procs 4, the bare loop's --procs 4)."""
    name, _, procs = kind.partition("-p")
    return (name, int(procs)) if procs.isdigit() and name in ("repro", "bare") else (kind, None)


def client_cmd(kind: str, url: str, c: int, prompt_len: int, seconds: float, out: Path, tokenizer: str,
               prompts: int) -> list[str]:
    kind, procs = base_kind(kind)
    if kind == "repro":
        return [tool("repro"), "stress", "--url", url, "--concurrency", str(c), "--duration", str(seconds),
                "--prompt-len", str(prompt_len), "--vocab-size", "250", "--window", "600", "--out", str(out),
                *REPRO_EXTRA, *(["--client-procs", str(procs)] if procs else [])]
    if kind == "vllm-bench":
        n = prompts
        return [tool("vllm"), "bench", "serve", "--backend", "openai", "--base-url", url, "--endpoint",
                "/v1/completions", "--model", "fast", "--tokenizer", tokenizer, "--dataset-name", "random",
                "--random-input-len", str(prompt_len), "--random-output-len", "1", "--num-prompts", str(n),
                "--max-concurrency", str(c), "--request-rate", "inf", "--disable-tqdm",
                "--ready-check-timeout-sec", "0"]
    if kind == "naive":
        return [PY, str(HERE / "naive_client.py"), "--url", url, "--concurrency", str(c), "--duration",
                str(seconds), "--prompt-len", str(prompt_len)]
    if kind == "bare":
        return [PY, str(HERE / "bare_client.py"), "--url", url, "--concurrency", str(c), "--duration",
                str(seconds), "--prompt-len", str(prompt_len), "--procs", str(procs or SETUP["bare_procs"])]
    raise ValueError(kind)


def measure(kind: str, c: int, latency: float, files: bool, prompt_len: int, warm: float, window: float,
            out: Path, tokenizer: str, prompts: int) -> dict:
    port = free_port()
    store = f"/dev/shm/repro-stress-bench-files-{port}" if files else None
    ep = start_endpoint(port, latency, store, discard=base_kind(kind)[0] not in READS_FILES, text_tokens=prompt_len)
    url = f"http://127.0.0.1:{port}"
    run_dir = out / f"{kind}-c{c}-{'files' if files else 'nofiles'}"
    shutil.rmtree(run_dir, ignore_errors=True)
    # every client but vllm bench serve runs until stopped; vllm bench serve gets --vllm-bench-prompts prompts
    cmd = client_cmd(kind, url, c, prompt_len, 600.0, run_dir, tokenizer, prompts)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    log = open(out / f"{run_dir.name}.log", "wb")  # never a pipe: a chatty client would block on a full one
    client = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ps, eps = psutil.Process(client.pid), psutil.Process(ep.pid)
    res: dict = {"client": kind, "concurrency": c, "endpoint_workers": SETUP["endpoint_workers"],
                 "processes": base_kind(kind)[1] or (SETUP["bare_procs"] if kind == "bare" else 1), "latency_s": latency, "files": files, "prompt_len": prompt_len,
                 "command": " ".join(cmd)}
    try:
        deadline = time.monotonic() + 300
        while get(url + "/stats")["requests"] < 2:  # past vllm bench serve's single test prompt
            if client.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} sent nothing; see {log.name}")
            time.sleep(0.2)
        time.sleep(warm)
        s1, cpu1, ecpu1, all1, th1 = get(url + "/stats"), cpu_of(ps), cpu_of(eps), cpu_by_process(), thread_cpu(ps)
        time.sleep(window)
        s2, cpu2, ecpu2, all2, th2 = get(url + "/stats"), cpu_of(ps), cpu_of(eps), cpu_by_process(), thread_cpu(ps)
        if client.poll() is not None:
            res["note"] = "INVALID: the client ended inside the window"
        dt = s2["t"] - s1["t"]
        n = s2["requests"] - s1["requests"]
        res.update(window_s=round(dt, 2), requests=n, req_per_s=round(n / dt, 1),
                   client_cpu_s=round(cpu2 - cpu1, 2),
                   cpu_s_per_1000=round(1000 * (cpu2 - cpu1) / n, 3) if n else None,
                   endpoint_cpu_s_per_1000=round(1000 * (ecpu2 - ecpu1) / n, 3) if n else None,
                   mean_in_flight=round((s2["area"] - s1["area"]) / dt, 2),
                   fidelity=round((s2["area"] - s1["area"]) / dt / c, 4),
                   beside=beside(all1, all2, tree(ps) | {ep.pid, os.getpid()}, dt),
                   client_cores_by_thread=cores_by_thread(th1, th2, ps.pid, dt))
    finally:
        if client.poll() is None:
            os.killpg(client.pid, signal.SIGINT)
            try:
                client.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(client.pid, signal.SIGKILL)
                client.wait()
        try:
            res["endpoint_requests_total"] = get(url + "/stats")["requests"]
        except OSError:
            pass
        os.killpg(ep.pid, signal.SIGTERM)
        ep.wait(10)
        log.close()
        if store:
            res["files_left_in_storage"] = len([f for f in os.listdir(store) if f.endswith(".safetensors")])
            shutil.rmtree(store, ignore_errors=True)
    res["load_avg"] = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}
    if base_kind(kind)[0] == "repro" and (run_dir / "summary.json").exists():
        s = json.loads((run_dir / "summary.json").read_text())
        res["repro_reported_fidelity"] = s["fidelity"]["mean"]
        res["repro_files_verified"] = s["files"]["verified"]
        res["repro_files_bad"] = s["files"]["bad"]
        res["repro_client_fill"] = s["fidelity"]["client_fill_mean"]
        with open(run_dir / "requests.jsonl", "rb") as f:
            res["repro_requests_recorded"] = sum(1 for _ in f)
    print(json.dumps(res), flush=True)
    return res


def side_by_side(rows: list[dict]) -> str:
    """The capacity rows as one Markdown table, with repro's ratios to the other two."""
    lines = ["| round | client | requests/s | mean in flight | fidelity | CPU s / 1,000 req: client, endpoint "
             "| load avg (1 min) before, after | note |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        la = r["load_avg"]
        lines.append(f"| {r.get('round', 1)} | {r['client']} | {r['req_per_s']} | {r['mean_in_flight']} | {r['fidelity']} "
                     f"| {r['cpu_s_per_1000']}, {r['endpoint_cpu_s_per_1000']} | {la['before'][0]}, {la['after'][0]} "
                     f"| {r.get('note', '')} |")
    rate: dict[str, list[float]] = {}
    for r in rows:
        rate.setdefault(r["client"], []).append(r["req_per_s"])
    med = {k: statistics.median(v) for k, v in rate.items()}
    lines.append("")
    lines.append("median requests/s: " + ", ".join(f"{k} {v:g}" for k, v in med.items()))
    for mine in [k for k in med if base_kind(k)[0] == "repro"]:
        for other in [k for k in med if k == "vllm-bench" or base_kind(k)[0] == "bare"]:
            if med[mine] and med[other]:
                lines.append(f"{mine} / {other}: {med[mine] / med[other]:.2f}x")
    return "\n".join(lines)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: no stray clients
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/dev/shm/repro-stress-bench")
    ap.add_argument("--warm", type=float, default=5.0)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--tokenizer", default=str(Path.home() / ".cache/repro/tiny-llama-v1"))
    ap.add_argument("--only", choices=["capacity", "fidelity"], default=None)
    ap.add_argument("--clients", default=None,
                    help="comma list of repro, vllm-bench, bare, naive; repro-pN and bare-pN: of N processes "
                         "(repro --client-procs N, the bare loop's --procs N) (default: capacity repro,vllm-bench,bare; "
                         "fidelity all four)")
    ap.add_argument("--capacity-concurrency", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=1,
                    help="capacity: measure the clients this many times, interleaved (medians reported)")
    ap.add_argument("--concurrency", default="32,256,1024", help="fidelity concurrencies")
    ap.add_argument("--vllm-bench-prompts", type=int, default=60000,
                    help="prompts for vllm bench serve: more than it can send in --warm + --window (30,000 ran "
                         "out inside a 5 + 20 s window on a quiet 2-core VM)")
    ap.add_argument("--endpoint-workers", type=int, default=1,
                    help="fast_endpoint.py processes (SO_REUSEPORT): more for clients of several processes")
    ap.add_argument("--bare-procs", type=int, default=1, help="processes of the bare loop (its bound for N processes)")
    ap.add_argument("--repro-args", default="", help="extra arguments for repro stress (one string, split on spaces)")
    args = ap.parse_args()
    REPRO_EXTRA[:] = args.repro_args.split()
    SETUP.update(endpoint_workers=args.endpoint_workers, bare_procs=args.bare_procs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    if args.only in (None, "capacity"):
        clients = (args.clients or "repro,vllm-bench,bare").split(",")
        cap = []
        for rnd in range(1, args.rounds + 1):
            for kind in [k for k in clients if k != "naive"]:
                r = measure(kind, args.capacity_concurrency, 0.0, True, 128, args.warm, args.window, out,
                            args.tokenizer, args.vllm_bench_prompts)
                r["round"] = rnd
                cap.append(r)
        results += cap
        print(side_by_side(cap), flush=True)
    if args.only in (None, "fidelity"):
        clients = (args.clients or "repro,vllm-bench,naive,bare").split(",")
        for c in [int(x) for x in args.concurrency.split(",")]:
            for kind in clients:
                results.append(measure(kind, c, c / 200.0, True, 1024, args.warm, args.window, out, args.tokenizer,
                                       args.vllm_bench_prompts))
    (out / "results.json").write_text(json.dumps({"schema": "repro.bench.stress-client", "version": 2,
                                                  "machine": {"cpus": os.cpu_count()}, "results": results},
                                                 indent=2) + "\n")


if __name__ == "__main__":
    main()
