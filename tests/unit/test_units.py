import pytest

from repro.errors import UsageError
from repro.units import format_duration, parse_duration, parse_size


@pytest.mark.parametrize("text, seconds", [("6h", 21600), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("2.5", 2.5), (10, 10)])
def test_durations_parse_to_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "6 hours ago", "h", "-5"])
def test_unparseable_durations_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_duration(text)


def test_sizes_and_formatting():
    assert parse_size("20MB") == 20_000_000
    assert parse_size("1MiB") == 1 << 20
    with pytest.raises(UsageError):
        parse_size("lots")
    assert format_duration(3725) == "1h02m05s"


@pytest.mark.parametrize("seconds, text", [(600, "0.17 h"), (20, "0.0056 h"), (5400, "1.5 h"), (21600, "6.0 h"),
                                           (129600, "36 h"), (-1, "0 h")])
def test_exposure_is_written_in_hours(seconds, text):
    from repro.units import format_hours

    assert format_hours(seconds) == text
