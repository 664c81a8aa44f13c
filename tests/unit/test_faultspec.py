"""The fault-injection spec grammar: what `--inject` accepts and how it refuses the rest."""

import pytest

from repro.vllm_plugins.faultspec import Fault, FaultSpecError, parse


def test_stall_after_accepts_seconds_units_and_steps():
    assert parse("stall-after=30").faults[0].seconds == 30
    assert parse("stall-after=5m").faults[0].seconds == 300
    f = parse("stall-after=200steps").faults[0]
    assert f.steps == 200 and f.seconds is None


def test_stall_for_takes_an_optional_start_offset():
    f = parse("stall-for=10,after=1m").faults[0]
    assert (f.kind, f.seconds, f.after) == ("stall-for", 10, 60)


def test_hazard_carries_rate_threshold_and_seed():
    f = parse("hazard=120,min_running=8,seed=3").faults[0]
    assert (f.rate_per_hour, f.min_running, f.seed) == (120, 8, 3)


def test_hazard_takes_an_onset_in_engine_steps():
    """hazard=R,min_running=N,onset=STEPS: no stall before STEPS scheduler steps with work (0 by default)."""
    assert parse("hazard=120,min_running=8").faults[0].onset_steps == 0
    assert parse("hazard=120,min_running=8,onset=500").faults[0].onset_steps == 500
    assert parse("hazard=120,onset=500steps").faults[0].onset_steps == 500


def test_hazard_takes_an_onset_in_engine_seconds_when_it_has_a_time_unit():
    """onset=20s / 2m: no stall before that much engine time after the first work; no step onset then."""
    f = parse("hazard=120,min_running=2,onset=20s").faults[0]
    assert (f.onset_s, f.onset_steps) == (20.0, 0)
    assert parse("hazard=120,onset=2m").faults[0].onset_s == 120.0
    assert parse("hazard=120,onset=500").faults[0].onset_s == 0.0


def test_several_faults_join_with_semicolons():
    spec = parse("stall-for=2 ; write-stall=30")
    assert [f.kind for f in spec.faults] == ["stall-for", "write-stall"]
    assert spec.of_kind("write-stall")[0].seconds == 30


def test_gpu_hang_takes_an_optional_time_or_step_trigger():
    assert parse("gpu-hang").faults[0].seconds == 0
    assert parse("gpu-hang=45s").faults[0].seconds == 45
    f = parse("gpu-hang=100steps").faults[0]
    assert (f.kind, f.steps, f.seconds) == ("gpu-hang", 100, None)


def test_release_is_a_spec_of_its_own():
    assert parse("release").release


@pytest.mark.parametrize("text, words", [
    ("bogus=1", "unknown fault 'bogus'"),
    ("stall-after", "needs a value"),
    ("stall-after=soon", "not a time"),
    ("stall-for=3,until=4", "unknown option"),
    ("hazard=fast", "not a rate"),
    ("hazard=3,min_running=-1", "must not be negative"),
    ("hazard=3,onset=soon", "hazard onset: 'soon' is neither a step count .500, 500steps. nor a time"),
    ("hazard=3,onset=20x", "hazard onset: '20x' is neither"),
    ("hazard=3,onset=-5", "must not be negative"),
    ("", "empty"),
    ("release=1", "takes no value"),
    ("gpu-hang=later", "not a time"),
    ("gpu-hang=3,stream=2", "unknown option"),
])
def test_bad_specs_are_refused_with_a_message_naming_the_part(text, words):
    with pytest.raises(FaultSpecError, match=words):
        parse(text)


def test_raise_after_takes_seconds_or_steps_like_stall_after():
    assert parse("raise-after=30s").faults[0] == Fault("raise-after", seconds=30.0)
    assert parse("raise-after=5steps").faults[0] == Fault("raise-after", steps=5)
    with pytest.raises(FaultSpecError, match="raise-after needs a value"):
        parse("raise-after")
