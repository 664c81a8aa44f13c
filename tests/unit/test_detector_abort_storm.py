"""abort-storm: most requests end in client timeouts and goodput collapses -- a warning, never a stall.

The sequences follow what was measured on a GPU (VLLM_NOTES "Aborts leak files"): goodput fell
from 132 to 4 requests/s under 0.05-0.4 s client timeouts, and single 1-s stats windows read
``0.0 tokens/s ... Running: 4 reqs, Waiting: 42 reqs`` while the engine was fine.
"""

from __future__ import annotations

from repro.monitor.detector import (ABORT_STORM, ENGINE_STALL, HEALTHY, STALLED, SUSPECT, ClientSnapshot, Detector,
                                    Observation)
from repro.monitor.logs import parse_stats_line
from repro.monitor.metrics import MetricsSample
from repro.scenario import DetectSettings

ZERO_4_42 = ("(APIServer pid=7) INFO 11-28 17:08:02 [loggers.py:335] Engine 000: Avg prompt throughput: 0.0 tokens/s, "
             "Avg generation throughput: 0.0 tokens/s, Running: 4 reqs, Waiting: 42 reqs, GPU KV cache usage: 1.0%, "
             "Prefix cache hit rate: 0.0%")
BUSY_4_42 = ZERO_4_42.replace("prompt throughput: 0.0", "prompt throughput: 5120.0")


def settings(**kw: object) -> DetectSettings:
    base = dict(window=2.0, min_bad_evaluations=2, startup_grace=0.0, abort_window=10.0, abort_share=0.5, abort_min=10)
    base.update(kw)
    return DetectSettings(**base)  # type: ignore[arg-type]


def m(tokens: float, kv: float, running: float = 4, waiting: float = 42) -> MetricsSample:
    return MetricsSample(running=running, waiting=waiting, kv_usage=kv, prompt_tokens=tokens, generation_tokens=0.0)


def healthy(n: int) -> list[Observation]:
    """n seconds at 132 requests/s, no aborts."""
    return [Observation(float(i), m(1000.0 * (i + 1), 0.01 * (i % 5), running=32, waiting=0),
                        client=ClientSnapshot(32, 132 * i, 0, 0)) for i in range(n)]


def storm(t0: int, n: int, zero_every: int = 3, zero_run: int = 1, ok0: int = 0) -> list[Observation]:
    """n seconds of an abort storm: ~200 aborts/s, 4 completions/s; `zero_run` polls of zero throughput every `zero_every`."""
    out, tok, kv, ok = [], 1e6, 0.1, ok0
    for i in range(n):
        t = t0 + i
        zero = (i % zero_every) < zero_run and i >= 6  # the storm is recognised after half its window
        if not zero:
            ok += 4
            tok += 5120.0
            kv = 0.1 + 0.01 * (i % 7)
        line = parse_stats_line(ZERO_4_42 if zero else BUSY_4_42)
        assert line is not None
        out.append(Observation(float(t), m(tok, kv), stats_lines=(line,),
                               client=ClientSnapshot(32, ok, 0, 200 * i)))
    return out


def run(det: Detector, obs: list[Observation]) -> list:
    return [det.observe(o) for o in obs]


def test_zero_throughput_single_windows_during_a_storm_are_not_engine_stall() -> None:
    """GIVEN healthy load, THEN a storm with a 0.0 tokens/s window every 3 s: never suspect, warning abort-storm."""
    a = run(Detector(settings()), healthy(10) + storm(10, 60, ok0=1320))
    in_storm = a[15:]
    assert all(x.state == HEALTHY and x.stall_class is None for x in in_storm)
    assert all(x.warning == ABORT_STORM for x in in_storm)
    zero_polls = [x for x in in_storm if not x.progress]
    assert len(zero_polls) >= 15
    assert all("abort storm" in " ".join(x.evidence["reasons"]) for x in zero_polls)


def test_runs_of_zero_windows_longer_than_the_stall_window_during_a_storm_are_not_a_stall() -> None:
    """3 consecutive zero polls with window=2 s, K=2 would be an engine-stall without the storm."""
    seq = healthy(10) + storm(10, 60, zero_every=5, zero_run=3, ok0=1320)
    a = run(Detector(settings()), seq)
    assert not [x for x in a if x.state in (SUSPECT, STALLED)]
    # the same engine picture without the aborts: the zero runs are an engine-stall (the test can fail)
    calm = [Observation(o.t, o.metrics, stats_lines=o.stats_lines,
                        client=ClientSnapshot(32, o.client.completed, 0, 0)) for o in seq]  # type: ignore[union-attr]
    b = run(Detector(settings()), calm)
    assert any(x.state == STALLED and x.stall_class == ENGINE_STALL for x in b)


def test_storm_evidence_names_share_goodput_and_counts() -> None:
    a = run(Detector(settings()), healthy(10) + storm(10, 30, ok0=1320))
    ev = a[-1].evidence["abort_storm"]
    assert ev["abort_share"] > 0.95 and ev["aborts_per_s"] > 150 and ev["goodput_per_s"] < 5
    assert ev["since"] is not None and ev["since"] >= 10


def test_a_real_engine_stall_during_a_storm_is_still_detected_after_the_abort_window() -> None:
    """Progress stops for good (the aborts keep timing out): once none was seen for abort_window, engine-stall."""
    seq = healthy(10) + storm(10, 20, ok0=1320)
    last = seq[-1]
    assert last.metrics is not None and last.client is not None
    frozen = [Observation(float(30 + i), last.metrics, stats_lines=(),
                          client=ClientSnapshot(32, last.client.completed, 0, last.client.aborted + 200 * (i + 1)))
              for i in range(30)]
    a = run(Detector(settings()), seq + frozen)
    stalled = next(x for x in a if x.state == STALLED)
    assert stalled.stall_class == ENGINE_STALL
    assert stalled.t <= 30 + 10 + 2 + 2  # abort_window + window + one poll of slack


def test_aborts_that_are_a_minority_are_no_storm() -> None:
    """100 completions/s and 40 timeouts/s: goodput did not collapse."""
    obs = [Observation(float(i), m(1000.0 * (i + 1), 0.01 * (i % 5)), client=ClientSnapshot(32, 100 * i, 0, 40 * i))
           for i in range(30)]
    assert all(x.warning is None for x in run(Detector(settings()), obs))


def test_a_few_timeouts_on_an_idle_server_are_no_storm() -> None:
    """Below abort_min aborts in the window: no storm, whatever the share."""
    obs = [Observation(float(i), m(0.0, 0.0, running=0, waiting=0), client=ClientSnapshot(0, 0, 0, i // 3))
           for i in range(30)]
    assert all(x.warning is None for x in run(Detector(settings()), obs))


def early_aborts(t0: int, n: int, probe_at: dict[int, str] | None = None, aborted0: int = 0) -> list[Observation]:
    """A storm whose requests all time out before the engine holds any: gauges at zero, counters flat,
    32 in flight in the client, ~370 aborts/s (measured on the CPU build with 0.08 s timeouts)."""
    probe_at = probe_at or {}
    return [Observation(float(t0 + i), m(24991.0, 0.0, running=0, waiting=0), probe=probe_at.get(i),
                        client=ClientSnapshot(32, 0, 0, aborted0 + 370 * (i + 1))) for i in range(n)]


def test_a_storm_that_aborts_everything_before_the_engine_holds_it_is_not_a_client_stall() -> None:
    """No probe answer yet: suspect (so the runner probes), never stalled, however long it lasts."""
    a = run(Detector(settings()), early_aborts(0, 40))
    assert not [x for x in a if x.state == STALLED]
    held = [x for x in a if x.state == SUSPECT]
    assert len(held) == 39 and all(x.stall_class == "client-stall" for x in held)
    assert all(x.warning == ABORT_STORM for x in a[2:])  # recognised after 2 s of hundreds of aborts a second


def test_an_answered_probe_during_such_a_storm_makes_it_healthy() -> None:
    a = run(Detector(settings()), early_aborts(0, 30, probe_at={8: "ok"}))
    after = a[8:8 + 10]  # the answer stays good for max(abort_window, window) = 10 s
    assert all(x.state == HEALTHY and x.warning == ABORT_STORM for x in after)
    assert "a probe was answered" in " ".join(after[3].evidence["reasons"])
    assert not [x for x in a if x.state == STALLED]


def test_an_unanswered_probe_during_such_a_storm_is_an_engine_stall() -> None:
    """The engine froze with its gauges at zero while the client kept timing out: engine-stall."""
    a = run(Detector(settings()), early_aborts(0, 30, probe_at={8: "timeout"}))
    stalled = next(x for x in a if x.state == STALLED)
    assert stalled.stall_class == ENGINE_STALL and stalled.t <= 8 + 2 + 2
