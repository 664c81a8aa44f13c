"""A stand-in for a hung vLLM server, for capture tests that need no real vLLM (pystack-style: a real
process that hangs at a known place).

    python fake_vllm_server.py serve --port P --log LOG --ready FILE --mode MODE [--api-key K ...]

The launcher (this process: its argv holds "vllm" and " serve", so repro classifies it as the launcher)
answers GET /metrics on 127.0.0.1:P, writes LOG (a vLLM-like log with a stats line and its own argv and
environment echoed, as vLLM does), and starts one child titled ``VLLM::EngineCore`` that hangs in a
function named after MODE:

    scheduler  blocked in hang_in_scheduler (Event.wait, no CPU)
    write      blocked in hang_in_write (lock acquire, no CPU)
    spin       busy in spin_in_loop (pure Python loop, CPU)
    cuda-wait  busy in spin_in_cuda_wait and deaf to SIGTERM, like an engine thread spinning inside
               cuEventSynchronize, whose Python signal handler never gets to run

When the child is in place it writes FILE. Every secret given in argv or env is echoed into LOG.
"""

from __future__ import annotations

import argparse
import http.server
import multiprocessing
import os
import sys
import threading
import time

METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="fake"} 3.0
vllm:num_requests_waiting{engine="0",model_name="fake"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="fake"} 0.01
vllm:prompt_tokens_total{engine="0",model_name="fake"} 1200.0
vllm:generation_tokens_total{engine="0",model_name="fake"} 345.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="fake"} 17.0
"""


def hang_in_scheduler(ready: str) -> None:
    ev = threading.Event()
    open(ready, "w").close()
    ev.wait()


def hang_in_write(ready: str) -> None:
    lock = threading.Lock()
    lock.acquire()
    open(ready, "w").close()
    lock.acquire()


def spin_in_loop(ready: str) -> None:
    open(ready, "w").close()
    x = 0
    while True:
        x = (x + 1) % 1000003


def spin_in_cuda_wait(ready: str) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    spin_in_loop(ready)


def engine_core_step(mode: str, ready: str) -> None:
    {"scheduler": hang_in_scheduler, "write": hang_in_write, "spin": spin_in_loop,
     "cuda-wait": spin_in_cuda_wait}[mode](ready)


def engine_core_main(mode: str, ready: str) -> None:
    import setproctitle

    setproctitle.setproctitle("VLLM::EngineCore")
    engine_core_step(mode, ready)


class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = METRICS.encode() if self.path == "/metrics" else b"{}"
        self.send_response(200 if self.path in ("/metrics", "/health") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("serve")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--mode", default="scheduler")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--echo-env", action="append", default=[])
    args, _unknown = ap.parse_known_args()
    pid = os.getpid()
    with open(args.log, "a") as log:
        log.write(f"(APIServer pid={pid}) INFO 11-28 17:00:00 [api_utils.py:286] non-default args: "
                  f"{{'port': {args.port}, 'api_key': [{args.api_key!r}]}}\n")
        log.write(f"(APIServer pid={pid}) INFO argv: {' '.join(sys.argv)}\n")
        for k, v in sorted(os.environ.items()):
            if k.startswith(("HF_", "OPENAI", "PLANTED", "DATABASE")) or k in args.echo_env:
                log.write(f"(APIServer pid={pid}) DEBUG env {k}={v}\n")
        log.write(f"(APIServer pid={pid}) INFO 11-28 17:00:05 [loggers.py:335] Engine 000: Avg prompt throughput: "
                  "0.0 tokens/s, Avg generation throughput: 0.0 tokens/s, Running: 3 reqs, Waiting: 1 reqs, "
                  "CPU KV cache usage: 1.0%, Prefix cache hit rate: 0.0%\n")
        if os.environ.get("PLANTED_BEARER"):
            log.write(f"(APIServer pid={pid}) DEBUG request headers: Authorization: Bearer "
                      f"{os.environ['PLANTED_BEARER']}\n")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Metrics)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=engine_core_main, args=(args.mode, args.ready), daemon=True)
    child.start()
    while child.is_alive():
        time.sleep(0.2)


if __name__ == "__main__":
    main()
