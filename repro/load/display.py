"""Live progress of a stress run: a rich panel on a terminal, plain periodic lines otherwise.

Kept apart from collection: the monitor hands a snapshot dict to :meth:`Progress.update`
once per poll; nothing here feeds back into the run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from repro.units import format_duration


def _f(x: Any, fmt: str = "{:.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def elapsed_text(s: dict[str, Any]) -> str:
    """'elapsed 1s of 10m00s, 9m59s left' (never a negative number); 'elapsed 1s' without a duration."""
    elapsed = max(0.0, float(s.get("elapsed") or 0.0))
    dur = s.get("duration")
    rem = s.get("remaining")
    if dur is None and rem is not None:
        dur = elapsed + max(0.0, float(rem))
    if dur is None:
        return f"elapsed {format_duration(elapsed)}"
    left = max(0.0, float(dur) - elapsed) if rem is None else max(0.0, float(rem))
    return f"elapsed {format_duration(elapsed)} of {format_duration(float(dur))}, {format_duration(left)} left"


class Progress:
    """``every``: seconds between plain lines; the first one is printed at once. ``clock``: monotonic seconds
    (injected by tests: a machine booted a few seconds ago has a small monotonic clock)."""

    def __init__(self, tty: bool | None = None, every: float = 10.0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = every
        self.clock = clock
        self._last_plain: float | None = None  # None: nothing printed yet, the next update prints
        self._live: Any = None

    def start(self) -> None:
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=self.stream), refresh_per_second=2, transient=False)
            self._live.start()

    def line(self, s: dict[str, Any]) -> str:
        return (f"[{elapsed_text(s)}] "
                f"{s['req_s']:.1f} req/s  in-flight {s['in_flight']}/{s['concurrency']}  "
                f"server run {_f(s.get('running'))} wait {_f(s.get('waiting'))}  "
                f"tok/s gen {_f(s.get('gen_tps'))} prompt {_f(s.get('prompt_tps'))}  "
                f"kv {_f(s.get('kv_pct'), '{:.1f}')}%  ok {s['ok']} files {s['files_ok']}"
                + (f" BAD {s['files_bad']} (not clean)" if s.get("files_not_clean")
                   else (f" (bad {s['files_bad']})" if s.get("files_bad") else ""))
                + (f" (not written: engine stalled {s['files_not_written']})" if s.get("files_not_written") else "")
                + (f"  api-server {s['api_server']:.0f}" if s.get("api_server") is not None else "")
                + f"  err {s['errors_total']}  last progress {_f(s.get('since_progress'), '{:.0f}')}s ago  "
                f"fidelity {_f(s.get('fidelity'), '{:.2f}')}  detector {s['state']}"
                + (f" ({s['class']})" if s.get("class") else "")
                + ("  WARNING: the client, not the server, is the limit" if s.get("client_limited") else "")
                + ("  WARNING: vLLM's API server holds a large share of the load" if s.get("api_server_heavy")
                   else ""))

    def table(self, s: dict[str, Any]) -> Any:
        from rich.table import Table

        t = Table(show_header=False, box=None, title="repro stress", title_justify="left")
        state = s["state"] + (f" ({s['class']})" if s.get("class") else "")
        style = {"healthy": "green", "suspect": "yellow", "stalled": "bold red"}.get(s["state"], "")
        rows = [
            ("time", elapsed_text(s)),
            ("requests", f"{s['ok']} ok, {s['req_s']:.1f} req/s, in flight {s['in_flight']}/{s['concurrency']}, "
                         f"file checks pending {s['in_check']}"),
            ("server", f"running {_f(s.get('running'))}, waiting {_f(s.get('waiting'))}, "
                       f"inside the API server {_f(s.get('api_server'))}, KV {_f(s.get('kv_pct'), '{:.1f}')}%"),
            ("tokens/s", f"generated {_f(s.get('gen_tps'))}, prompt {_f(s.get('prompt_tps'))}"),
            ("files", f"{s['files_ok']} verified and consumed, "
                      + (f"[bold red]{s['files_bad']} bad: this run is not clean[/bold red]" if s.get("files_not_clean")
                         else f"{s['files_bad']} bad")
                      + (f", {s['files_not_written']} not written: engine stalled" if s.get("files_not_written") else "")),
            ("errors", ", ".join(f"{k} {v}" for k, v in s.get("errors", {}).items()) or "none"),
            ("last progress", f"{_f(s.get('since_progress'), '{:.0f}')} s ago"),
            ("fidelity", f"{_f(s.get('fidelity'), '{:.2f}')} (server running+waiting / concurrency)"),
            ("detector", f"[{style}]{state}[/{style}]" if style else state),
        ]
        for k, v in rows:
            t.add_row(f"[bold]{k}[/bold]", v)
        if s.get("client_limited"):
            t.add_row("[bold yellow]warning[/bold yellow]", "the client, not the server, is the limit")
        if s.get("api_server_heavy"):
            t.add_row("[bold yellow]warning[/bold yellow]", "vLLM's API server holds a large share of the requests in "
                      "flight: try --api-server-count 2+, shorter prompts or a faster client machine")
        return t

    def update(self, s: dict[str, Any]) -> None:
        if self._live is not None:
            self._live.update(self.table(s))
            return
        now = self.clock()
        if self._last_plain is None or now - self._last_plain >= self.every:
            self._last_plain = now
            print(self.line(s), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def final_line(summary: dict[str, Any], report: Any = None, run_dir: Any = None) -> str:
    """The one line a stress run ends with: outcome, requests, files, and where the report is."""
    r = summary.get("requests") or {}
    f = summary.get("files") or {}
    c = (summary.get("fidelity") or {}).get("concurrency")
    outcome = summary.get("outcome") or "?"
    st = summary.get("stall") or {}
    head = f"{outcome} ({st.get('class')} after {format_duration(st.get('since_s') or 0.0)} of load)" \
        if outcome == "stall" else outcome
    files = ""
    if f.get("verified") or f.get("bad") or f.get("not_written_engine_stalled"):
        files = f"; files {f.get('verified', 0)} verified, {f.get('bad', 0)} bad" + (
            f", {f['not_written_engine_stalled']} not written: engine stalled" if f.get("not_written_engine_stalled")
            else "") + (f", {f['not_checked']} not checked: the run stopped first" if f.get("not_checked") else "")
    where = f"report: {report}" if report else f"run directory: {run_dir}"
    return (f"{head}: {r.get('ok', 0)} ok / {r.get('total', 0)} requests in "
            f"{format_duration(summary.get('load_seconds') or 0.0)}" + (f" at concurrency {c}" if c else "")
            + f"{files} -- {where}")
