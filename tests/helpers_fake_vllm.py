"""A scripted stand-in for a vLLM server's HTTP side (/metrics, /health, /v1/models, completions).

For fast tests of decision rules (watchdog.sh, watch targets) that need no engine: the test sets
the numbers the server reports.
"""

from __future__ import annotations

import http.server
import threading
import time


class FakeVllm:
    """/metrics, /health and /v1/models of a vLLM server with two engines; the test sets the state."""

    def __init__(self) -> None:
        self.running = 0
        self.prompt = 100.0
        self.gen = 1000.0
        self.advance = 0.0  # tokens added per /metrics read
        self.metrics_reads = 0
        self.lookalike = True  # a series whose name only starts like vllm:num_requests_running
        self.hang_completions = 0.0  # seconds a POST /v1/completions hangs (a stuck engine)
        self.completions = 0
        self.broken = False  # /metrics answers 503 (a server that is down or wedged)
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/metrics" and fake.broken:
                    self.send_response(503)
                    self.end_headers()
                    return
                if self.path == "/metrics":
                    fake.metrics_reads += 1
                    fake.gen += fake.advance
                    fake.prompt += fake.advance
                    body = fake.page().encode()
                elif self.path == "/health":
                    body = b""
                elif self.path == "/v1/models":
                    body = b'{"data": [{"id": "tiny model"}]}'
                elif self.path == "/progress":  # what a restart command of the tests calls
                    fake.running, fake.advance = 4, 7.0
                    body = b"ok"
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802  (the probe of `repro watch`)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if fake.hang_completions:
                    time.sleep(fake.hang_completions)
                fake.completions += 1
                fake.prompt += 2
                fake.gen += 1
                body = b'{"choices": [{"text": "x"}], "usage": {"prompt_tokens": 2, "completion_tokens": 1}}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def page(self) -> str:
        # Split over two engines, as with data parallel; a model name with a space in it.
        r0, r1 = self.running // 2, self.running - self.running // 2
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f'vllm:num_requests_running{{engine="0",model_name="tiny model"}} {float(r0)}',
            f'vllm:num_requests_running{{engine="1",model_name="tiny model"}} {float(r1)}',
            "# TYPE vllm:prompt_tokens_total counter",
            f'vllm:prompt_tokens_total{{engine="0",model_name="tiny model"}} {self.prompt}',
            f'vllm:prompt_tokens_created{{engine="0",model_name="tiny model"}} 1.7e+09',
            f'vllm:generation_tokens_total{{engine="0",model_name="tiny model"}} {self.gen / 2}',
            f'vllm:generation_tokens_total{{engine="1",model_name="tiny model"}} {self.gen / 2}',
        ]
        if self.lookalike:
            lines.append('vllm:num_requests_running_total{engine="0"} 5.0')
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
