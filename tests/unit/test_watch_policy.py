"""The restart policy on a fake clock: back-off 10 s doubling to 5 min, reset after 10 healthy
minutes, give up after --max-restarts within an hour."""

from __future__ import annotations

import pytest

from repro.errors import UsageError
from repro.watch.policy import PolicySettings, RestartPolicy


def restart(p: RestartPolicy, now: float) -> float:
    d = p.delay(now)
    p.record_restart(now + d)
    return d


def test_first_restart_is_immediate_then_the_backoff_doubles_from_10s_to_5min():
    p = RestartPolicy(PolicySettings(max_restarts=100))
    now, delays = 0.0, []
    for _ in range(8):
        d = restart(p, now)
        delays.append(d)
        now += d + 1
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]


def test_ten_healthy_minutes_reset_the_backoff():
    p = RestartPolicy(PolicySettings(max_restarts=100))
    for t in (0.0, 1.0, 12.0):
        restart(p, t)
    assert p.delay(40.0) == 40
    p.note_health(100.0, healthy=True)
    p.note_health(100.0 + 599, healthy=True)
    assert p.delay(700.0) == 40, "reset before 10 minutes of health"
    p.note_health(100.0 + 600, healthy=True)
    assert p.delay(701.0) == 10


def test_an_unhealthy_moment_restarts_the_healthy_clock():
    p = RestartPolicy(PolicySettings(max_restarts=100))
    for t in (0.0, 1.0, 12.0):
        restart(p, t)
    p.note_health(100.0, healthy=True)
    p.note_health(400.0, healthy=False)
    p.note_health(401.0, healthy=True)
    p.note_health(800.0, healthy=True)  # 700 s since the first healthy note, but only 399 s in a row
    assert p.delay(801.0) == 40


def test_gives_up_after_max_restarts_within_an_hour():
    p = RestartPolicy(PolicySettings(max_restarts=3))
    for t in (0.0, 100.0, 200.0):
        assert not p.give_up(t)
        restart(p, t)
    assert p.give_up(300.0)
    assert p.recent_restarts(300.0) == 3


def test_restarts_older_than_an_hour_no_longer_count():
    p = RestartPolicy(PolicySettings(max_restarts=3))
    for t in (0.0, 100.0, 200.0):
        restart(p, t)
    assert p.give_up(3599.0)
    assert not p.give_up(3600.0 + 0.5)  # the first one has aged out
    assert p.recent_restarts(3600.5) == 2


def test_max_restarts_zero_never_restarts():
    assert RestartPolicy(PolicySettings(max_restarts=0)).give_up(0.0)


@pytest.mark.parametrize("kw", [{"backoff_initial": -1}, {"backoff_initial": 20, "backoff_max": 10},
                                {"max_restarts": -1}, {"reset_after": 0}])
def test_bad_settings_are_usage_errors(kw):
    with pytest.raises(UsageError):
        PolicySettings(**kw).validate()
