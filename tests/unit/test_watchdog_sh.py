"""scripts/watchdog.sh against a scripted /metrics endpoint (fast, no vLLM).

The real-vLLM test is tests/integration/test_watchdog_sh_real.py; these pin down the
decision rules: running > 0 with flat token counters for the window is a stall, an idle
server is not, progress is not; restarts back off and stop after --max-restarts; bad
input fails with one line and the repro exit codes, without running the restart.
"""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from repro.errors import EXIT_OK, EXIT_STALL, EXIT_TARGET, EXIT_USAGE

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "watchdog.sh"

# A `docker` client stand-in: logs its arguments to $DOCKER_LOG, knows one running container.
# `restart` calls $FAKE_RESTART_URL (if set) so that a scripted server makes progress again.
FAKE_DOCKER = """#!/bin/sh
echo "$*" >> "$DOCKER_LOG"
case "$1" in
  inspect)
    for last; do :; done
    if [ "$last" != "{name}" ]; then echo "Error: No such object: $last" >&2; exit 1; fi
    case "$*" in
      *State.Running*) echo "true {pid}" ;;
      *State.Pid*) echo "{pid}" ;;
      *State.Status*) echo "running" ;;
      *) echo "true {pid}" ;;
    esac ;;
  logs) echo "(APIServer pid=1) INFO a log line"; sleep 30 ;;
  restart) [ -n "$FAKE_RESTART_URL" ] && curl -fsS "$FAKE_RESTART_URL" >/dev/null; exit 0 ;;
  stop|start) exit 0 ;;
esac
exit 0
"""


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


@pytest.fixture
def fake():
    f = FakeVllm()
    yield f
    f.close()


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def test_running_requests_with_flat_token_counters_for_the_window_are_a_stall(fake):
    fake.running = 31
    r = run("--url", fake.url, "--interval", "0.2", "--window", "2", "--once")
    assert r.returncode == EXIT_STALL, r.stderr
    assert "STALL: running=31" in r.stderr
    held = re.search(r"STALL: .* for (\d+) s", r.stderr)
    assert held and int(held.group(1)) >= 2, r.stderr  # declared only once the bad state held for the window


def test_an_idle_server_is_not_a_stall(fake):
    fake.running = 0
    r = run("--url", fake.url, "--interval", "0.2", "--window", "1", "--duration", "3", "--once")
    assert r.returncode == EXIT_OK, r.stderr
    assert "STALL" not in r.stderr
    assert fake.metrics_reads >= 5  # it really watched


def test_a_server_making_progress_is_not_a_stall(fake):
    fake.running, fake.advance = 31, 5.0
    r = run("--url", fake.url, "--interval", "0.2", "--window", "1", "--duration", "3", "--once")
    assert r.returncode == EXIT_OK, r.stderr
    assert "STALL" not in r.stderr


def test_the_restart_command_runs_after_the_stall_and_the_server_is_watched_again(fake, tmp_path):
    fake.running = 8
    marker = tmp_path / "restarted"
    cmd = f"touch {marker} && curl -fsS {fake.url}/progress >/dev/null"
    r = run("--url", fake.url, "--interval", "0.2", "--window", "1", "--restart-cmd", cmd, "--once")
    assert r.returncode == EXIT_STALL, r.stderr
    assert marker.exists()
    err = r.stderr
    assert err.index("STALL") < err.index("restarting: sh -c") < err.index("server answers again")


def test_restart_storms_back_off_and_give_up_after_max_restarts(fake, tmp_path):
    fake.running = 8  # stalls again at once after every restart
    stamps = tmp_path / "restarts"
    r = run("--url", fake.url, "--interval", "0.2", "--window", "0.5", "--backoff", "1", "--max-restarts", "3",
            "--restart-cmd", f"date +%s.%N >> {stamps}", timeout=120)
    assert r.returncode == EXIT_STALL, r.stderr
    assert "giving up: 3 restarts in the last hour (--max-restarts 3)" in r.stderr
    times = [float(x) for x in stamps.read_text().split()]
    assert len(times) == 3
    gaps = [b - a for a, b in zip(times, times[1:])]
    # back-off 1 s then 2 s, on top of the detection window
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0, gaps
    assert "back-off: waiting 1s" in r.stderr and "back-off: waiting 2s" in r.stderr


def test_with_a_container_it_dumps_that_containers_processes_and_runs_docker_restart(fake, tmp_path):
    fake.running = 8
    # the container's init on this host, with an EngineCore below it; a decoy of the same title outside
    holder = subprocess.Popen(["bash", "-c", '(exec -a "VLLM::EngineCore" sleep 60) & wait'])
    decoy = subprocess.Popen(["bash", "-c", 'exec -a "VLLM::EngineCore" sleep 60'])
    engine = None
    for _ in range(100):
        kids = psutil.Process(holder.pid).children()
        if kids and kids[0].cmdline()[:1] == ["VLLM::EngineCore"]:
            engine = kids[0].pid
            break
        time.sleep(0.05)
    assert engine is not None
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").write_text(FAKE_DOCKER.format(name="vllm-prod", pid=holder.pid))
    (bindir / "docker").chmod(0o755)
    spy = bindir / "fake-py-spy"
    spy.write_text("#!/bin/sh\necho \"dump $*\" >> \"$DOCKER_LOG\"\n")
    spy.chmod(0o755)
    log = tmp_path / "docker.log"
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "DOCKER_LOG": str(log),
           "FAKE_RESTART_URL": fake.url + "/progress"}
    try:
        r = subprocess.run(["sh", str(SCRIPT), "--url", fake.url, "--interval", "0.2", "--window", "1",
                            "--container", "vllm-prod", "--pyspy", "--pyspy-cmd", str(spy),
                            "--dump-dir", str(tmp_path / "dumps"), "--once"],
                           capture_output=True, text=True, timeout=60, env=env)
        assert decoy.poll() is None and holder.poll() is None
    finally:
        for p in psutil.Process(holder.pid).children(recursive=True):
            p.kill()
        holder.kill()
        decoy.kill()
        holder.wait()
        decoy.wait()
    assert r.returncode == EXIT_STALL, r.stderr
    calls = log.read_text().splitlines()
    assert "restart vllm-prod" in calls
    dumps = [c for c in calls if c.startswith("dump")]
    assert dumps == [f"dump dump --pid {engine}"], (dumps, engine, decoy.pid)
    assert r.stderr.index("STALL") < r.stderr.index("py-spy: stacks of VLLM::EngineCore") \
        < r.stderr.index("restarting: docker restart vllm-prod")


def test_metrics_that_stop_answering_for_the_window_lead_to_a_restart(fake, tmp_path):
    marker = tmp_path / "restarted"
    fake.running = 0  # idle, not stalled, while it still answers
    proc = subprocess.Popen(["sh", str(SCRIPT), "--url", fake.url, "--interval", "0.2", "--window", "1",
                             "--startup-grace", "1", "--restart-cmd", f"touch {marker}", "--once"],
                            stderr=subprocess.PIPE, text=True)
    while fake.metrics_reads < 2:  # watching a healthy-looking server first
        time.sleep(0.05)
    fake.broken = True
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_STALL, err
    assert "/metrics does not answer" in err and "/metrics has not answered" in err
    assert marker.exists()
    assert "did not answer within 1s of the restart" in err


def test_an_unreachable_url_fails_with_one_line_and_runs_no_restart(tmp_path):
    marker = tmp_path / "restarted"
    r = run("--url", "http://127.0.0.1:9", "--interval", "0.2", "--window", "1", "--restart-cmd", f"touch {marker}")
    assert r.returncode == EXIT_TARGET
    assert r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("error: cannot read vLLM metrics from http://127.0.0.1:9/metrics")
    assert not marker.exists()


def test_a_page_without_vllm_metrics_is_refused(fake, monkeypatch):
    fake.page = lambda: "# nothing here\nprocess_cpu_seconds_total 1.0\n"  # type: ignore[method-assign]
    r = run("--url", fake.url, "--window", "1")
    assert r.returncode == EXIT_TARGET
    assert "cannot read vLLM metrics" in r.stderr


def test_a_failing_restart_command_exits_3_with_its_exit_code(fake):
    fake.running = 8
    r = run("--url", fake.url, "--interval", "0.2", "--window", "0.5", "--restart-cmd", "exit 7")
    assert r.returncode == EXIT_TARGET
    assert "the restart command failed (exit 7): exit 7" in r.stderr


def test_a_container_that_does_not_exist_fails_before_watching(fake):
    r = run("--url", fake.url, "--container", "repro-no-such-container-xyz", "--window", "1")
    assert r.returncode == EXIT_TARGET
    assert "--container repro-no-such-container-xyz: docker inspect failed" in r.stderr
    assert fake.metrics_reads == 0


def test_a_pid_that_does_not_exist_fails_before_watching(fake):
    r = run("--url", fake.url, "--pid", "999999999", "--window", "1")
    assert r.returncode == EXIT_TARGET
    assert "no such process: --pid 999999999" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--window", "soon"], "--window must be a number, got 'soon'"),
    (["--bogus"], "unknown option --bogus (see --help)"),
    (["--url"], "--url needs a value"),
])
def test_bad_options_exit_2_with_one_line(args, message):
    r = run(*args)
    assert r.returncode == EXIT_USAGE
    assert r.stderr.strip() == f"error: {message}"


def test_help_lists_the_exit_codes():
    r = run("--help")
    assert r.returncode == EXIT_OK
    assert "Exit codes" in r.stdout and "--max-restarts" in r.stdout


def test_the_script_is_posix_sh_and_uses_no_bashisms():
    text = SCRIPT.read_text()
    assert text.startswith("#!/bin/sh\n")
    for bashism in ("[[", "$((RANDOM", "function ", "local ", "<<<", "declare ", "${!"):
        assert bashism not in text, bashism
    r = subprocess.run(["dash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
