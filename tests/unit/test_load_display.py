"""Live progress: plain periodic lines when not a terminal, a rich table on one.

Contract: both show elapsed and time left (never a negative number), req/s, in flight, server
running/waiting, token rates, KV usage, files, errors, seconds since progress, fidelity and the
detector state; the client-limit warning appears only when the client is the limit. The first
plain line is printed at once whatever the monotonic clock reads (a machine booted seconds ago
reads a few seconds), later ones every `every` seconds. The run ends with one line that points
at the report.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from repro.executors.fleet import FleetView
from repro.load.display import Progress, elapsed_text, final_line

SNAP = {"elapsed": 75.0, "remaining": 45.0, "duration": 120.0, "req_s": 12.5, "in_flight": 31, "concurrency": 32,
        "in_check": 2, "running": 20.0, "waiting": 9.0, "kv_pct": 4.2, "prompt_tps": 5000.0, "gen_tps": 40.0,
        "ok": 900, "files_ok": 898, "files_bad": 1, "errors": {"timeout": 2}, "errors_total": 2,
        "since_progress": 0.4, "fidelity": 0.91, "client_limited": False, "state": "suspect", "class": "engine-stall"}


class FakeClock:
    """A monotonic clock that reads what the test sets (no sleeping)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_plain_line_has_every_field() -> None:
    line = Progress(tty=False).line(SNAP)
    for part in ("elapsed 1m15s of 2m00s, 45s left", "12.5 req/s", "in-flight 31/32", "run 20 wait 9", "gen 40",
                 "prompt 5000", "kv 4.2%", "files 898 (bad 1)", "err 2", "0s ago", "fidelity 0.91",
                 "suspect (engine-stall)"):
        assert part in line, part
    assert "WARNING" not in line and "-45s" not in line


@pytest.mark.parametrize("uptime", [3.0, 20.0, 3_000_000.0])
def test_first_plain_line_is_printed_at_once_whatever_the_monotonic_clock_reads(uptime: float) -> None:
    """GIVEN a machine whose monotonic clock reads `uptime` (3 s after boot, or weeks) and a rate limit of an hour,
    WHEN the first snapshot arrives THEN its line is printed at once; the next within the hour is not, and the
    one an hour later is."""
    out, clock = io.StringIO(), FakeClock(uptime)
    p = Progress(tty=False, every=3600, stream=out, clock=clock)
    p.update(SNAP)
    assert len(out.getvalue().splitlines()) == 1
    clock.now += 1.0
    p.update(SNAP)
    assert len(out.getvalue().splitlines()) == 1
    clock.now += 3600.0
    p.update(SNAP)
    assert len(out.getvalue().splitlines()) == 2


def test_fleet_view_prints_its_first_lines_at_once_on_a_freshly_booted_machine() -> None:
    """The same rate-limit pattern in the Ray fleet's plain view: the first update prints at 5 s of uptime."""
    out = io.StringIO()
    view = FleetView(stream=out, every=3600, clock=FakeClock(5.0))
    view.update([], 1.0)
    assert out.getvalue().startswith("[1s] fleet of 0")


@pytest.mark.parametrize("snap, text", [
    ({"elapsed": 1.0, "duration": 600.0, "remaining": 599.0}, "elapsed 1s of 10m00s, 9m59s left"),
    ({"elapsed": 605.0, "duration": 600.0, "remaining": 0.0}, "elapsed 10m05s of 10m00s, 0s left"),
    ({"elapsed": 605.0, "duration": 600.0}, "elapsed 10m05s of 10m00s, 0s left"),
    ({"elapsed": 3.0, "remaining": 7.0}, "elapsed 3s of 10s, 7s left"),
    ({"elapsed": 75.0, "remaining": None}, "elapsed 1m15s"),
    ({"elapsed": -0.2, "duration": 60.0, "remaining": 60.2}, "elapsed 0s of 1m00s, 1m00s left"),
])
def test_elapsed_and_time_left_are_never_negative(snap: dict, text: str) -> None:
    assert elapsed_text(snap) == text
    assert "-" not in elapsed_text(snap)


def test_client_limit_warning_shows_in_both_forms() -> None:
    snap = dict(SNAP, client_limited=True)
    assert "the client, not the server, is the limit" in Progress(tty=False).line(snap)
    console = Console(file=io.StringIO(), width=140, record=True)
    console.print(Progress(tty=True).table(snap))
    text = console.export_text()
    assert "the client, not the server, is the limit" in text
    assert "engine-stall" in text and "898 verified" in text and "timeout 2" in text
    assert "elapsed 1m15s of 2m00s, 45s left" in text


def test_files_the_stalled_engine_never_wrote_show_apart_from_bad_ones() -> None:
    snap = dict(SNAP, files_bad=0, files_not_written=1)
    assert "not written: engine stalled 1" in Progress(tty=False).line(snap)
    assert "(bad" not in Progress(tty=False).line(snap)
    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(Progress(tty=True).table(snap))
    assert "898 verified and consumed, 0 bad, 1 not written: engine stalled" in console.export_text()


def test_final_line_is_one_line_pointing_at_the_report() -> None:
    summary = {"outcome": "stall", "stall": {"class": "engine-stall", "since_s": 250.2}, "load_seconds": 301.0,
               "requests": {"ok": 2205, "total": 2240}, "fidelity": {"concurrency": 32},
               "files": {"verified": 2205, "bad": 0, "not_written_engine_stalled": 1}}
    line = final_line(summary, "runs/x/report.html", "runs/x")
    assert "\n" not in line
    assert line == ("stall (engine-stall after 4m10s of load): 2205 ok / 2240 requests in 5m01s at concurrency 32; "
                    "files 2205 verified, 0 bad, 1 not written: engine stalled -- report: runs/x/report.html")
    assert final_line(summary, None, "runs/x").endswith("-- run directory: runs/x")


def test_bad_files_and_the_api_server_share_show_in_both_forms() -> None:
    """A run with bad files says it is not clean; the API server's share and its warning appear when set."""
    snap = dict(SNAP, files_not_clean=True, api_server=12.0, api_server_heavy=True)
    line = Progress(tty=False).line(snap)
    assert "BAD 1 (not clean)" in line and "api-server 12" in line and "API server holds a large share" in line
    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(Progress(tty=True).table(snap))
    text = console.export_text()
    assert "1 bad: this run is not clean" in text and "inside the API server 12" in text
    assert "--api-server-count" in text
    clean = Progress(tty=False).line(dict(SNAP, files_not_clean=False, api_server=None, api_server_heavy=False))
    assert "not clean" not in clean and "api-server" not in clean and "API server" not in clean
