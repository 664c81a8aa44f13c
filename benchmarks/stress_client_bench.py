"""Load-generator benchmarks for `repro stress` (issues 3 and 9), side by side in one run.

Against benchmarks/fast_endpoint.py (a fresh one per measurement, on loopback):

* capacity: concurrency 256, zero server latency, no files: achieved requests/s and
  client CPU seconds per 1,000 requests, repro stress vs `vllm bench serve`;
* fidelity: concurrency 32, 256, 1024 with 1024-token prompts, hidden-state files
  ([1024, 2, 128] float32, 1 MB, written under the .lock protocol) and a server
  latency of C/200 s (so the endpoint needs ~200 req/s, well within its means):
  mean requests in flight at the endpoint / concurrency, for repro stress,
  `vllm bench serve` (which reads no files) and a naive client that does the file
  work on its event loop (benchmarks/naive_client.py).

Each client runs in its own process. A measurement window of --window seconds
starts --warm seconds after the endpoint sees the first request; requests/s,
in-flight (time-integral at the endpoint) and client CPU (user+sys of the client
process and its children, psutil) are all taken over that window only, so start-up
work (vLLM's imports, dataset generation) is not charged to anyone.

    .venv/bin/python benchmarks/stress_client_bench.py --out /dev/shm/repro-stress-bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
PY = sys.executable
BIN = Path(sys.executable).parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def start_endpoint(port: int, latency: float, files: str | None) -> subprocess.Popen[bytes]:
    cmd = [PY, str(HERE / "fast_endpoint.py"), "--port", str(port), "--latency", str(latency)]
    if files:
        cmd += ["--files", files]
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


def client_cmd(kind: str, url: str, c: int, prompt_len: int, seconds: float, out: Path, tokenizer: str,
               rate_guess: float) -> list[str]:
    if kind == "repro":
        return [str(BIN / "repro"), "stress", "--url", url, "--concurrency", str(c), "--duration", str(seconds),
                "--prompt-len", str(prompt_len), "--vocab-size", "250", "--window", "600", "--out", str(out)]
    if kind == "vllm-bench":
        n = int(rate_guess * (seconds + 5)) + c
        return [str(BIN / "vllm"), "bench", "serve", "--backend", "openai", "--base-url", url, "--endpoint",
                "/v1/completions", "--model", "fast", "--tokenizer", tokenizer, "--dataset-name", "random",
                "--random-input-len", str(prompt_len), "--random-output-len", "1", "--num-prompts", str(n),
                "--max-concurrency", str(c), "--request-rate", "inf", "--disable-tqdm",
                "--ready-check-timeout-sec", "0"]
    if kind == "naive":
        return [PY, str(HERE / "naive_client.py"), "--url", url, "--concurrency", str(c), "--duration",
                str(seconds), "--prompt-len", str(prompt_len)]
    raise ValueError(kind)


def measure(kind: str, c: int, latency: float, files: bool, prompt_len: int, warm: float, window: float,
            out: Path, tokenizer: str, rate_guess: float) -> dict:
    port = free_port()
    store = f"/dev/shm/repro-stress-bench-files-{port}" if files else None
    ep = start_endpoint(port, latency, store)
    url = f"http://127.0.0.1:{port}"
    run_dir = out / f"{kind}-c{c}-{'files' if files else 'nofiles'}"
    shutil.rmtree(run_dir, ignore_errors=True)
    # repro and the naive client run until stopped; vllm bench serve gets prompts for the window and a margin
    seconds = 600.0 if kind != "vllm-bench" else warm + window + 10
    cmd = client_cmd(kind, url, c, prompt_len, seconds, run_dir, tokenizer, rate_guess)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = open(out / f"{run_dir.name}.log", "wb")  # never a pipe: a chatty client would block on a full one
    client = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ps = psutil.Process(client.pid)
    res: dict = {"client": kind, "concurrency": c, "latency_s": latency, "files": files, "prompt_len": prompt_len}
    try:
        deadline = time.monotonic() + 300
        while get(url + "/stats")["requests"] == 0:
            if client.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} sent nothing; see {log.name}")
            time.sleep(0.2)
        time.sleep(warm)
        s1, cpu1 = get(url + "/stats"), cpu_of(ps)
        time.sleep(window)
        s2, cpu2 = get(url + "/stats"), cpu_of(ps)
        if client.poll() is not None:
            res["note"] = "client ended inside the window"
        dt = s2["t"] - s1["t"]
        n = s2["requests"] - s1["requests"]
        res.update(window_s=round(dt, 2), requests=n, req_per_s=round(n / dt, 1),
                   client_cpu_s=round(cpu2 - cpu1, 2),
                   cpu_s_per_1000=round(1000 * (cpu2 - cpu1) / n, 3) if n else None,
                   mean_in_flight=round((s2["area"] - s1["area"]) / dt, 2),
                   fidelity=round((s2["area"] - s1["area"]) / dt / c, 4))
        if files and store:
            res["files_left_in_storage"] = len([f for f in os.listdir(store) if f.endswith(".safetensors")])
    finally:
        if client.poll() is None:
            os.killpg(client.pid, signal.SIGINT)
            try:
                client.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(client.pid, signal.SIGKILL)
                client.wait()
        os.killpg(ep.pid, signal.SIGTERM)
        ep.wait(10)
        log.close()
        if store:
            shutil.rmtree(store, ignore_errors=True)
    if kind == "repro" and (run_dir / "summary.json").exists():
        s = json.loads((run_dir / "summary.json").read_text())
        res["repro_reported_fidelity"] = s["fidelity"]["mean"]
        res["repro_files_verified"] = s["files"]["verified"]
        res["repro_files_bad"] = s["files"]["bad"]
        res["repro_client_fill"] = s["fidelity"]["client_fill_mean"]
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: no stray clients
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/dev/shm/repro-stress-bench")
    ap.add_argument("--warm", type=float, default=5.0)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--tokenizer", default=str(Path.home() / ".cache/repro/tiny-llama-v1"))
    ap.add_argument("--only", choices=["capacity", "fidelity"], default=None)
    ap.add_argument("--clients", default="repro,vllm-bench,naive")
    ap.add_argument("--concurrency", default="32,256,1024", help="fidelity concurrencies")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    clients = args.clients.split(",")
    if args.only in (None, "capacity"):
        for kind in [k for k in clients if k in ("repro", "vllm-bench")]:
            results.append(measure(kind, 256, 0.0, False, 128, args.warm, args.window, out, args.tokenizer, 450))
    if args.only in (None, "fidelity"):
        for c in [int(x) for x in args.concurrency.split(",")]:
            for kind in clients:
                # vllm bench serve reads no files: its endpoint writes none (they would only pile up)
                results.append(measure(kind, c, c / 200.0, kind != "vllm-bench", 1024, args.warm, args.window, out,
                                       args.tokenizer, 220))
    (out / "results.json").write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, "results": results},
                                                 indent=2) + "\n")


if __name__ == "__main__":
    main()
