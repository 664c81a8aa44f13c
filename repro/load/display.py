"""Live progress of a stress run: a rich panel on a terminal, plain periodic lines otherwise.

Kept apart from collection: the monitor hands a snapshot dict to :meth:`Progress.update`
once per poll; nothing here feeds back into the run.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from repro.units import format_duration


def _f(x: Any, fmt: str = "{:.0f}") -> str:
    return "-" if x is None else fmt.format(x)


class Progress:
    def __init__(self, tty: bool | None = None, every: float = 10.0, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = every
        self._last_plain = 0.0
        self._live: Any = None

    def start(self) -> None:
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=self.stream), refresh_per_second=2, transient=False)
            self._live.start()

    def line(self, s: dict[str, Any]) -> str:
        rem = s.get("remaining")
        return (f"[{format_duration(s['elapsed'])}{'' if rem is None else ' / -' + format_duration(rem)}] "
                f"{s['req_s']:.1f} req/s  in-flight {s['in_flight']}/{s['concurrency']}  "
                f"server run {_f(s.get('running'))} wait {_f(s.get('waiting'))}  "
                f"tok/s gen {_f(s.get('gen_tps'))} prompt {_f(s.get('prompt_tps'))}  "
                f"kv {_f(s.get('kv_pct'), '{:.1f}')}%  ok {s['ok']} files {s['files_ok']} "
                + (f"BAD {s['files_bad']} (not clean) " if s.get("files_not_clean") else "")
                + (f"api-server {s['api_server']:.0f} " if s.get("api_server") is not None else "")
                + f"err {s['errors_total']}  last progress {_f(s.get('since_progress'), '{:.0f}')}s ago  "
                f"fidelity {_f(s.get('fidelity'), '{:.2f}')}  detector {s['state']}"
                + (f" ({s['class']})" if s.get("class") else "")
                + ("  WARNING: the client, not the server, is the limit" if s.get("client_limited") else "")
                + ("  WARNING: vLLM's API server holds a large share of the load" if s.get("api_server_heavy")
                   else ""))

    def table(self, s: dict[str, Any]) -> Any:
        from rich.table import Table

        t = Table(show_header=False, box=None, title="repro stress", title_justify="left")
        rem = s.get("remaining")
        state = s["state"] + (f" ({s['class']})" if s.get("class") else "")
        style = {"healthy": "green", "suspect": "yellow", "stalled": "bold red"}.get(s["state"], "")
        rows = [
            ("elapsed / remaining", f"{format_duration(s['elapsed'])} / {'-' if rem is None else format_duration(rem)}"),
            ("requests", f"{s['ok']} ok, {s['req_s']:.1f} req/s, in flight {s['in_flight']}/{s['concurrency']}, "
                         f"file checks pending {s['in_check']}"),
            ("server", f"running {_f(s.get('running'))}, waiting {_f(s.get('waiting'))}, "
                       f"inside the API server {_f(s.get('api_server'))}, KV {_f(s.get('kv_pct'), '{:.1f}')}%"),
            ("tokens/s", f"generated {_f(s.get('gen_tps'))}, prompt {_f(s.get('prompt_tps'))}"),
            ("files", f"{s['files_ok']} verified and consumed, "
                      + (f"[bold red]{s['files_bad']} bad: this run is not clean[/bold red]" if s.get("files_not_clean")
                         else f"{s['files_bad']} bad")),
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
        now = time.monotonic()
        if now - self._last_plain >= self.every:
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
