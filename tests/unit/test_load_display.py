"""Live progress: plain periodic lines when not a terminal, a rich table on one.

Contract: both show elapsed/remaining, req/s, in flight, server running/waiting,
token rates, KV usage, files, errors, seconds since progress, fidelity and the
detector state; the client-limit warning appears only when the client is the limit.
"""

from __future__ import annotations

import io

from rich.console import Console

from repro.load.display import Progress

SNAP = {"elapsed": 75.0, "remaining": 45.0, "req_s": 12.5, "in_flight": 31, "concurrency": 32, "in_check": 2,
        "running": 20.0, "waiting": 9.0, "kv_pct": 4.2, "prompt_tps": 5000.0, "gen_tps": 40.0, "ok": 900,
        "files_ok": 898, "files_bad": 1, "errors": {"timeout": 2}, "errors_total": 2, "since_progress": 0.4,
        "fidelity": 0.91, "client_limited": False, "state": "suspect", "class": "engine-stall"}


def test_plain_line_has_every_field_and_is_rate_limited() -> None:
    out = io.StringIO()
    p = Progress(tty=False, every=3600, stream=out)
    p.update(SNAP)
    p.update(SNAP)  # within `every`: not printed again
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    line = lines[0]
    for part in ("1m15s", "-45s", "12.5 req/s", "in-flight 31/32", "run 20 wait 9", "gen 40", "prompt 5000",
                 "kv 4.2%", "files 898", "err 2", "0s ago", "fidelity 0.91", "suspect (engine-stall)"):
        assert part in line, part
    assert "WARNING" not in line


def test_client_limit_warning_shows_in_both_forms() -> None:
    snap = dict(SNAP, client_limited=True)
    assert "the client, not the server, is the limit" in Progress(tty=False).line(snap)
    console = Console(file=io.StringIO(), width=140, record=True)
    console.print(Progress(tty=True).table(snap))
    text = console.export_text()
    assert "the client, not the server, is the limit" in text
    assert "engine-stall" in text and "898 verified" in text and "timeout 2" in text


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
