"""The stall detector: healthy -> suspect -> stalled, classified, with evidence.

A pure object. Feed it one :class:`Observation` per poll (its time ``t`` is
given, never read from a clock) and it returns an :class:`Assessment`. Nothing
in here touches the network, a file or a clock, so a recorded sequence replays
exactly (unit tests) and ``repro watch`` reuses it as is.

What counts as progress: the server's token counters (prompt + generation)
move, ``request_success`` moves, the KV-cache usage changes (a long chunked
prefill fills blocks before any token is counted), the client sees a
completion, or a stats line reports non-zero throughput.

Without progress, what the server holds decides the class:

==============  ================================================================
engine-stall    running > 0, counters flat (the field bug: metrics frozen, /health 200)
queue-stall     waiting > 0, running = 0, nothing admitted
client-stall    the client has requests in flight, the server holds none, and the server
                answers a 1-token probe (without a probe answer it stays a suspect
                client-stall; a probe that times out makes it an engine-stall)
server-dead     process gone, ``EngineDeadError``/fatal line, or connection refused
slow            progress, but below ``slow_floor`` tokens/s over a whole window
==============  ================================================================

``abort-storm`` is a *warning*, not a stall (``Assessment.warning``): over the last
``abort_window`` seconds at least ``abort_min`` requests ended in client timeouts
(each aborts the request on the server) and they are at least ``abort_share`` of
all requests that ended, so goodput has collapsed while the engine keeps
working. vLLM then shows single stats windows of ``0.0 tokens/s`` with requests
running; while a storm holds and the server made progress within
``abort_window``, a poll without progress is not counted as bad (no
``engine-stall``/``queue-stall``/``client-stall`` suspicion). A real stall during a
storm stops all progress: once none was seen for ``abort_window`` seconds the
usual classes apply again (detection is later by at most ``abort_window``).
A storm whose requests all end before the engine holds any (server gauges at
zero, client in flight) is not a client-stall: it is held at suspect until a
1-token probe is answered (the storm: healthy for ``max(abort_window, window)``)
or times out (an engine frozen with its gauges at zero: engine-stall).

An idle server (nothing running, waiting or in flight) is healthy. A bad
condition becomes a stall only when it has lasted ``window`` seconds AND at
least ``min_bad_evaluations`` consecutive observations were bad; any progress
returns to healthy at once. That hysteresis is what keeps a long prefill or
one slow request from being called a stall. ``server-dead`` needs no window: a
gone process or a fatal log line is definitive, connection refused needs K
consecutive observations.

Why the probe: with short requests (``max_tokens=1``) every running request finishes
in the step that runs it, and vLLM publishes its gauges after a step. An engine
blocked at the start of the next step therefore freezes ``running = waiting = 0``
while the client waits on requests queued inside it -- the same picture as a
client whose requests never reached the server. The caller then sends one
1-token request (``probe``): no answer within its timeout means the engine does
not step. The probe's own tokens are not counted as progress.

The stats log line goes silent when the engine hangs (vLLM demotes all-zero
lines to DEBUG), so silence after a ``0.0 tokens/s ... Running: N`` line is
counted as evidence of an engine stall, and stands in for the server view when
/metrics cannot be read.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from repro.monitor.logs import StatsLine
from repro.monitor.metrics import MetricsSample
from repro.scenario import DetectSettings

HEALTHY, SUSPECT, STALLED = "healthy", "suspect", "stalled"
ENGINE_STALL, QUEUE_STALL, CLIENT_STALL, SERVER_DEAD, SLOW = (
    "engine-stall", "queue-stall", "client-stall", "server-dead", "slow")
CLASSES = (ENGINE_STALL, QUEUE_STALL, CLIENT_STALL, SERVER_DEAD, SLOW)
ABORT_STORM = "abort-storm"  # a warning (Assessment.warning), never a stall class
WARNINGS = (ABORT_STORM,)

REFUSED = "refused"  # Observation.metrics_error for a refused/reset connection
_KV_EPS = 1e-9
_DEFAULT_SILENCE = 30.0  # seconds of log silence that count, before the stats interval is known


@dataclass(frozen=True)
class ClientSnapshot:
    """The load generator's side, cumulative counters."""

    in_flight: int = 0  # sent, no response yet
    completed: int = 0  # successful responses
    failed: int = 0  # requests that failed after all retries
    aborted: int = 0  # client timeouts of single attempts (each one aborts the request on the server)


@dataclass(frozen=True)
class Observation:
    """What was seen at time ``t`` (seconds on any monotonic clock)."""

    t: float
    metrics: MetricsSample | None = None  # None: /metrics could not be read this time
    metrics_error: str | None = None  # "refused" | "timeout" | "http 503" | "parse" ...
    process_alive: bool | None = None  # None: unknown (attached, no process to watch)
    stats_lines: tuple[StatsLine, ...] = ()  # stats lines that appeared since the previous observation
    fatal: str | None = None  # cause of a fatal log line seen since the previous observation
    client: ClientSnapshot | None = None
    probe: str | None = None  # an active 1-token probe that ended since the previous observation: ok | timeout | error
    probe_tokens: int = 0  # tokens the probe added to the server's counters (not progress of the load)


@dataclass(frozen=True)
class Assessment:
    state: str  # healthy | suspect | stalled
    stall_class: str | None  # one of CLASSES while suspect or stalled
    since: float | None  # when the current bad condition was first observed
    t: float
    changed: bool  # state or class differs from the previous assessment
    progress: bool  # this observation showed progress
    evidence: dict[str, Any] = field(default_factory=dict)
    warning: str | None = None  # abort-storm while it holds (the engine works; the client throws its work away)
    # While bad: the bad condition began after this -- the last observation before it that was not bad
    # (for a stall, the last one that saw progress), or ``since`` when there was none. ``since`` is
    # one poll late for a stall (its first flat observation); this is at most one poll early.
    began: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "class": self.stall_class, "since": self.since, "began": self.began,
                "t": self.t, "evidence": self.evidence, "warning": self.warning}


class Detector:
    """Feed :meth:`observe` one observation per poll, in time order."""

    def __init__(self, settings: DetectSettings | None = None) -> None:
        self.s = settings or DetectSettings()
        self.state = HEALTHY
        self.stall_class: str | None = None
        self.since: float | None = None
        self.t0: float | None = None
        self.bad_count = 0
        self.refused_count = 0
        self.fatal: str | None = None
        self.last_progress_t: float | None = None
        self.last_good_t: float | None = None  # the last observation that was not bad
        self.last_t: float | None = None
        self._prev_tokens: float | None = None
        self._prev_success: float | None = None
        self._prev_kv: float | None = None
        self._prev_completed: int | None = None
        self._last_metrics: MetricsSample | None = None
        self._last_stats: StatsLine | None = None
        self._last_stats_t: float | None = None
        self._stats_gaps: deque[float] = deque(maxlen=16)
        self._token_hist: deque[tuple[float, float]] = deque()  # (t, tokens) over the window, for `slow`
        self._busy_hist: deque[tuple[float, bool]] = deque()
        self.probe_failed = False  # a probe got no answer during the current bad period
        self._ends: deque[tuple[float, int, int]] = deque()  # (t, completed, aborted) over the abort window
        self.storm_since: float | None = None
        self.probe_ok_t: float | None = None  # when a 1-token probe was last answered

    # -- helpers ------------------------------------------------------------
    def stats_interval(self) -> float | None:
        """The stats-line interval learnt from the log (median gap), None until two gaps were seen."""
        if len(self._stats_gaps) < 2:
            return None
        g = sorted(self._stats_gaps)
        return g[len(g) // 2]

    def log_silent_for(self, t: float) -> float | None:
        return None if self._last_stats_t is None else t - self._last_stats_t

    def _silent_after_zero_line(self, t: float) -> bool:
        """The last stats line read 0.0 tokens/s with requests running, and the log has been quiet since."""
        line = self._last_stats
        if line is None or not line.idle_throughput or line.running <= 0 or self._last_stats_t is None:
            return False
        iv = self.stats_interval()
        limit = 3 * iv if iv else _DEFAULT_SILENCE
        return t - self._last_stats_t > limit

    def _progress(self, ob: Observation) -> tuple[bool, list[str]]:
        why: list[str] = []
        m = ob.metrics
        if m is not None:
            probe_ok = ob.probe == "ok"
            tok = m.tokens
            if tok is not None:
                if self._prev_tokens is not None and tok - self._prev_tokens > (ob.probe_tokens if probe_ok else 0):
                    why.append(f"tokens +{tok - self._prev_tokens:g}")
                self._prev_tokens = tok
            if m.request_success is not None:
                if self._prev_success is not None and m.request_success - self._prev_success > (1 if probe_ok else 0):
                    why.append(f"request_success +{m.request_success - self._prev_success:g}")
                self._prev_success = m.request_success
            if m.kv_usage is not None:
                if self._prev_kv is not None and abs(m.kv_usage - self._prev_kv) > _KV_EPS and not probe_ok:
                    why.append("kv usage changed")
                self._prev_kv = m.kv_usage
        c = ob.client
        if c is not None:
            if self._prev_completed is not None and c.completed > self._prev_completed:
                why.append(f"client completions +{c.completed - self._prev_completed}")
            self._prev_completed = c.completed
        if any(not ln.idle_throughput for ln in ob.stats_lines):
            why.append("stats line shows throughput")
        return bool(why), why

    def _server_view(self, ob: Observation) -> tuple[float | None, float | None, str]:
        """(running, waiting, source): /metrics when fresh, else the last stats line."""
        if ob.metrics is not None and ob.metrics.running is not None:
            return ob.metrics.running, ob.metrics.waiting or 0.0, "metrics"
        if self._last_stats is not None:
            return float(self._last_stats.running), float(self._last_stats.waiting), "log"
        if self._last_metrics is not None and self._last_metrics.running is not None:
            return self._last_metrics.running, self._last_metrics.waiting or 0.0, "metrics (stale)"
        return None, None, "none"

    def _slow(self, t: float, tokens: float | None, busy: bool) -> float | None:
        """Token rate over the last full window when below the floor while busy, else None."""
        if self.s.slow_floor is None or tokens is None:
            return None
        self._token_hist.append((t, tokens))
        self._busy_hist.append((t, busy))
        while len(self._token_hist) > 2 and t - self._token_hist[1][0] >= self.s.window:
            self._token_hist.popleft()
        while len(self._busy_hist) > 2 and t - self._busy_hist[1][0] >= self.s.window:
            self._busy_hist.popleft()
        t_old, tok_old = self._token_hist[0]
        span = t - t_old
        if span < self.s.window or not all(b for _, b in self._busy_hist):
            return None
        rate = (tokens - tok_old) / span
        return rate if rate < self.s.slow_floor else None

    def _abort_storm(self, t: float, c: ClientSnapshot | None) -> dict[str, Any] | None:
        """Evidence of an abort storm over the last ``abort_window`` seconds, else None."""
        if c is None:
            return None
        w = self.s.abort_window
        self._ends.append((t, c.completed, c.aborted))
        while len(self._ends) > 2 and t - self._ends[1][0] >= w:
            self._ends.popleft()
        t0, ok0, ab0 = self._ends[0]
        span = t - t0
        if span < min(0.5 * w, 2.0):  # hundreds of aborts a second are a storm well before half the window
            return None
        d_ok, d_ab = c.completed - ok0, c.aborted - ab0
        ended = d_ok + d_ab
        if d_ab < self.s.abort_min or ended <= 0 or d_ab / ended < self.s.abort_share:
            return None
        return {"window_s": round(span, 3), "aborted": d_ab, "completed": d_ok, "abort_share": round(d_ab / ended, 4),
                "goodput_per_s": round(d_ok / span, 3), "aborts_per_s": round(d_ab / span, 3)}

    # -- the state machine -----------------------------------------------------
    def observe(self, ob: Observation) -> Assessment:
        t = ob.t
        first = self.t0 is None  # no baseline for the counters yet: never bad, unless dead
        if self.t0 is None:
            self.t0 = t
        self.last_t = t
        for ln in ob.stats_lines:
            if self._last_stats_t is not None and t > self._last_stats_t:
                self._stats_gaps.append(t - self._last_stats_t)
            self._last_stats, self._last_stats_t = ln, t
        if ob.fatal:
            self.fatal = self.fatal or ob.fatal
        if ob.metrics is not None:
            self._last_metrics = ob.metrics
        self.refused_count = self.refused_count + 1 if ob.metrics_error == REFUSED else 0

        progress, why = self._progress(ob)
        if ob.probe == "ok":
            self.probe_failed = False
            self.probe_ok_t = t
        elif ob.probe in ("timeout", "error"):
            self.probe_failed = True
        if progress:
            self.last_progress_t = t
        running, waiting, source = self._server_view(ob)
        c = ob.client
        in_flight = c.in_flight if c else None
        silent = self._silent_after_zero_line(t)
        storm = self._abort_storm(t, c)
        if storm is None:
            self.storm_since = None
        elif self.storm_since is None:
            self.storm_since = t

        ev: dict[str, Any] = {
            "running": running, "waiting": waiting, "server_view": source,
            "kv_usage": ob.metrics.kv_usage if ob.metrics else None,
            "tokens_total": ob.metrics.tokens if ob.metrics else None,
            "client_in_flight": in_flight, "client_completed": c.completed if c else None,
            "client_aborted": c.aborted if c else None,
            "last_progress_t": self.last_progress_t,
            "no_progress_for": None if self.last_progress_t is None else round(t - self.last_progress_t, 3),
            "metrics_error": ob.metrics_error, "process_alive": ob.process_alive,
            "probe": ob.probe, "probe_failed": self.probe_failed,
            "log_silent_for": None if self._last_stats_t is None else round(t - self._last_stats_t, 3),
            "log_silent_after_zero_line": silent,
            "last_stats_line": None if self._last_stats is None else self._last_stats.__dict__,
        }
        reasons: list[str] = []
        bad: str | None = None
        immediate = False

        if self.fatal or ob.process_alive is False:
            bad, immediate = SERVER_DEAD, True
            reasons.append(self.fatal or "the server process is gone")
        elif self.refused_count:
            bad = SERVER_DEAD
            reasons.append(f"connection refused ({self.refused_count} polls in a row)")
        elif progress:
            rate = self._slow(t, ob.metrics.tokens if ob.metrics else None,
                              bool((running or 0) + (waiting or 0) > 0 or (in_flight or 0) > 0))
            if rate is not None:
                bad = SLOW
                reasons.append(f"{rate:.2f} tokens/s over {self.s.window:g} s, below the floor {self.s.slow_floor:g}")
        else:
            self._slow(t, ob.metrics.tokens if ob.metrics else None, True)
            if running is not None and running > 0:
                bad = ENGINE_STALL
                reasons.append(f"running={running:g} with token counters flat ({source})")
            elif waiting is not None and waiting > 0:
                bad = QUEUE_STALL
                reasons.append(f"waiting={waiting:g}, running=0, nothing admitted")
            elif (in_flight or 0) > 0 and running is not None and self.probe_failed:
                bad = ENGINE_STALL
                reasons.append(f"client has {in_flight} in flight, the server reports none (its stats froze at "
                               f"the last engine step) and a 1-token probe got no answer: the engine does not step")
            elif (in_flight or 0) > 0 and running is not None:
                bad = CLIENT_STALL
                reasons.append(f"client has {in_flight} in flight, server holds none"
                               + ("; a 1-token probe was answered" if ob.probe == "ok" else ""))
            elif (in_flight or 0) > 0:  # no server view at all (metrics unreadable, no log)
                bad = ENGINE_STALL
                reasons.append(f"client has {in_flight} in flight, no completions, server view unavailable "
                               f"({ob.metrics_error or 'no metrics'})")
            if silent:
                reasons.append("stats log silent after a 0.0 tokens/s line with requests running")
                if bad is None:
                    bad = ENGINE_STALL
        if first and bad != SERVER_DEAD:
            bad = None
        if (storm is not None and bad in (ENGINE_STALL, QUEUE_STALL, CLIENT_STALL) and not self.probe_failed
                and self.last_progress_t is not None and t - self.last_progress_t < self.s.abort_window):
            reasons.append(f"not counted as {bad}: abort storm, and the server made progress "
                           f"{t - self.last_progress_t:.1f} s ago")
            bad = None
        hold = False
        if storm is not None and bad == CLIENT_STALL and not self.probe_failed:
            # In a storm the client's requests do end -- by its own timeout, before the engine holds
            # them -- so "in flight, server holds none" is the storm, not a stuck client. Only a probe
            # can tell that from an engine frozen with its gauges at zero: hold at suspect (the runner
            # probes on a client-stall suspicion) until one is answered (the storm) or not (engine-stall).
            fresh = max(self.s.abort_window, self.s.window)
            if self.probe_ok_t is not None and t - self.probe_ok_t <= fresh:
                reasons.append(f"not counted as {bad}: abort storm, and a probe was answered "
                               f"{t - self.probe_ok_t:.1f} s ago")
                bad = None
            else:
                hold = True
                reasons.append("abort storm: held at suspect until a 1-token probe is answered or not")
        if storm is not None:
            storm["since"] = self.storm_since
            ev["abort_storm"] = storm
        if progress:
            ev["progress"] = why

        prev_state, prev_class = self.state, self.stall_class
        if bad is None:
            self.state, self.stall_class, self.since, self.bad_count = HEALTHY, None, None, 0
            self.probe_failed = False
            self.last_good_t = t
        else:
            self.bad_count += 1
            if self.state == HEALTHY or self.since is None:
                self.since = t if bad != SLOW else t - self.s.window
            if self.state != STALLED or bad == SERVER_DEAD:
                self.stall_class = bad
            lasted = t - self.since
            in_grace = t - self.t0 < self.s.startup_grace
            if bad == SERVER_DEAD:
                done = immediate or self.refused_count >= self.s.min_bad_evaluations
            else:
                done = (lasted >= self.s.window and self.bad_count >= self.s.min_bad_evaluations
                        and not in_grace)
            if done and not hold:
                self.state = STALLED
            elif self.state != STALLED:
                self.state = SUSPECT
            ev["bad_for"] = round(lasted, 3)
            ev["consecutive_bad"] = self.bad_count
        ev["reasons"] = reasons
        changed = (self.state, self.stall_class) != (prev_state, prev_class)
        began = None
        if self.since is not None:
            began = self.since if self.last_good_t is None else min(self.since, self.last_good_t)
        return Assessment(self.state, self.stall_class, self.since, t, changed, progress, ev,
                          ABORT_STORM if storm is not None else None, began)
