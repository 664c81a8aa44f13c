"""build_observation: one poll's readings -> the detector's Observation, the one parser stress and watch share."""

from __future__ import annotations

from repro.monitor.detector import REFUSED, ClientSnapshot
from repro.monitor.observe import PARSE_ERROR, LogWarning, build_observation
from repro.watch.observe import Observer

METRICS = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
"""
STATS = ("INFO 01-02 03:04:05 [loggers.py:123] Engine 000: Avg prompt throughput: 10.0 tokens/s, "
         "Avg generation throughput: 5.0 tokens/s, Running: 3 reqs, Waiting: 2 reqs, GPU KV cache usage: 1.0%, "
         "Prefix cache hit rate: 0.0%")
SHM = "WARNING 01-02 03:04:06 [shm_broadcast.py:456] No available shared memory broadcast block found in 60 second."


def test_metrics_text_log_lines_process_and_probe_become_one_observation() -> None:
    """Parsed /metrics, the stats lines, the fatal marker, aliveness, client and probe all land in the Observation."""
    client = ClientSnapshot(in_flight=4, completed=10, failed=1)
    seen = build_observation(12.5, METRICS, None, [STATS, "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue"],
                             False, client, "ok", 3)
    ob = seen.observation
    assert ob.t == 12.5 and ob.metrics is not None and ob.metrics.running == 3 and ob.metrics.waiting == 2
    assert ob.metrics_error is None and ob.process_alive is False and ob.client == client
    assert len(ob.stats_lines) == 1 and ob.stats_lines[0].running == 3
    assert ob.fatal == "EngineDeadError in the server log"
    assert (ob.probe, ob.probe_tokens) == ("ok", 3)
    assert seen.last_stats_line == STATS


def test_unreadable_metrics_keep_their_error_and_garbage_is_a_parse_error() -> None:
    """No text: the caller's error name stands; text that is not Prometheus: the error is 'parse'."""
    assert build_observation(1.0, None, REFUSED, [], None).observation.metrics_error == REFUSED
    ob = build_observation(1.0, "not { prometheus", None, [], None).observation
    assert ob.metrics is None and ob.metrics_error == PARSE_ERROR


def test_a_warning_marker_is_reported_once_per_poll_with_its_line() -> None:
    """The shm-broadcast warning is named (marker + the line's tail), once however many lines repeat it."""
    seen = build_observation(1.0, METRICS, None, [SHM, SHM], True)
    assert len(seen.warnings) == 1 and "shm broadcast" in seen.warnings[0].marker
    assert seen.warnings[0].line.endswith("60 second.")
    assert seen.observation.fatal is None and seen.observation.stats_lines == ()


class Lines:
    def __init__(self, *batches: list[str]) -> None:
        self.batches = list(batches)

    def read_lines(self) -> list[str]:
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        pass


def test_watch_reports_log_warnings_once_per_server_like_stress() -> None:
    """The watch observer hands each new warning marker to on_warning the first time it appears, not again."""
    got: list[LogWarning] = []
    obs = Observer("http://127.0.0.1:9", log=Lines([SHM], [SHM, STATS], []), clock=lambda: 5.0, timeout=0.5,
                   on_warning=got.append)
    first = obs.observe()
    second = obs.observe()
    obs.observe()
    assert len(got) == 1 and obs.warnings == [got[0].marker] and "shm broadcast" in got[0].marker
    assert first.metrics_error == REFUSED and len(second.stats_lines) == 1
