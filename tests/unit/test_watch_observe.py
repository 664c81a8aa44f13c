"""The watchdog's observer and probe feeding the REAL detector, against a scripted server.

With --probe and no load, the probe decides: an idle server answers it (healthy), a stuck
engine does not (engine-stall once the window has passed). /metrics errors map to the
detector's names (refused, http N, parse).
"""

from __future__ import annotations

import time

import pytest

from repro.monitor.detector import ENGINE_STALL, HEALTHY, REFUSED, STALLED, Detector
from repro.scenario import DetectSettings
from repro.watch.observe import Observer, Prober, scrape
from tests.helpers_fake_vllm import FakeVllm


@pytest.fixture
def fake():
    f = FakeVllm()
    f.lookalike = False
    yield f
    f.hang_completions = 0.0
    f.close()


def watch_for(fake: FakeVllm, seconds: float) -> list:
    settings = DetectSettings(poll_interval=0.2, window=1.5, min_bad_evaluations=3, startup_grace=0.0)
    settings.probe_timeout = 0.5
    prober = Prober(fake.url, "tiny model", interval=0.2, timeout=settings.probe_timeout)
    prober.start()
    obs = Observer(fake.url, prober=prober)
    det = Detector(settings)
    out = []
    t_end = time.monotonic() + seconds
    try:
        while time.monotonic() < t_end:
            a = det.observe(obs.observe())
            out.append(a)
            if a.state == STALLED:
                break
            time.sleep(0.2)
    finally:
        obs.close()
    return out


def test_an_idle_server_that_answers_the_probe_stays_healthy(fake):
    """No stall, ever, and healthy most of the time: one probe answered late on a loaded machine (CI builds
    images beside the unit tests) makes one observation suspect, never a stall."""
    fake.running = 0
    seen = watch_for(fake, 4.0)
    assert fake.completions >= 5, "the probe did not run"
    assert all(a.state != STALLED for a in seen)
    states = [a.state for a in seen]
    assert states.count(HEALTHY) >= 2 * len(states) / 3 and HEALTHY in states[-5:], states


def test_a_stuck_engine_that_never_answers_the_probe_is_an_engine_stall(fake):
    fake.running = 0  # stats froze at zero: only the probe can tell
    fake.hang_completions = 30.0
    t0 = time.monotonic()
    seen = watch_for(fake, 10.0)
    assert seen[-1].state == STALLED and seen[-1].stall_class == ENGINE_STALL, [a.evidence.get("reasons") for a in seen[-3:]]
    assert "probe got no answer" in " ".join(seen[-1].evidence["reasons"])
    assert time.monotonic() - t0 >= 1.5  # not before the window


def test_metrics_errors_are_named_as_the_detector_expects(fake):
    assert scrape("http://127.0.0.1:9")[1] == REFUSED
    sample, err = scrape(fake.url)
    assert err is None and sample is not None and sample.running == 0
    fake.page = lambda: "not { prometheus"  # type: ignore[method-assign]
    assert scrape(fake.url)[1] == "parse"
    assert scrape(fake.url + "/nope")[1] == "http 404"
