"""One poll -> one :class:`~repro.monitor.detector.Observation`, the same for stress and watch.

:func:`build_observation` is pure: it takes what the caller read this poll -- the /metrics
text (or why there is none), the new lines of the server log, whether the server process
is alive, the client's counters and the probe that ended since the last poll -- and returns
the detector's input plus what the log said besides (warning markers, the last stats line).
Reading the sockets, files and processes stays with the caller (asyncio in ``repro stress``,
threads in ``repro watch``), so both feed the detector from the one parser.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from repro.monitor.detector import ClientSnapshot, Observation
from repro.monitor.logs import fatal_marker, parse_stats_line, warning_marker
from repro.monitor.metrics import MetricsParseError, parse_metrics

PARSE_ERROR = "parse"  # the metrics_error of a /metrics answer that is not Prometheus text


@dataclass(frozen=True)
class LogWarning:
    """A warning marker the log showed this poll (each marker is reported once per run by the caller)."""

    marker: str
    line: str  # the log line's last 300 characters


@dataclass(frozen=True)
class Observed:
    observation: Observation
    warnings: tuple[LogWarning, ...] = ()  # warning markers in this poll's lines, in order, each once
    last_stats_line: str | None = None  # the last stats line as vLLM printed it (for a death report)


def build_observation(t: float, metrics_text: str | None, metrics_error: str | None, lines: Iterable[str],
                      alive: bool | None, client: ClientSnapshot | None = None, probe: str | None = None,
                      probe_tokens: int = 0) -> Observed:
    """The Observation at ``t`` from this poll's readings (``metrics_text`` None: ``metrics_error`` says why)."""
    metrics = None
    if metrics_text is not None:
        try:
            metrics = parse_metrics(metrics_text)
        except MetricsParseError:
            metrics_error = PARSE_ERROR
    stats, fatal, last_stats = [], None, None
    warnings: list[LogWarning] = []
    for ln in lines:
        s = parse_stats_line(ln)
        if s is not None:
            stats.append(s)
            last_stats = ln.strip()
            continue
        fatal = fatal or fatal_marker(ln)
        w = warning_marker(ln)
        if w and all(x.marker != w for x in warnings):
            warnings.append(LogWarning(w, ln[-300:]))
    ob = Observation(t, metrics, None if metrics is not None else metrics_error, alive, tuple(stats), fatal, client,
                     probe=probe, probe_tokens=probe_tokens)
    return Observed(ob, tuple(warnings), last_stats)
