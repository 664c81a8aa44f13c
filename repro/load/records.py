"""Per-request records (streamed to requests.jsonl) and the run's counters, in bounded memory.

Nothing here grows with the number of requests: records are written as they
finish, counters are integers, and distributions are fixed-size log histograms.
The summary's request counts and requests.jsonl come from the same call
(:meth:`RunStats.finish`), so they always agree.

Files a stalled engine never wrote: a response can come back just before the engine stalls,
and the stalled engine then never writes (or never finishes) its hidden-state file. Such a
file is evidence of the stall, not a bad file: a check that ended ``file-missing`` or
``lock-timeout`` at or after the moment the stall began (``t_end`` >= the stall's ``since``,
seconds since the start of the load) is counted as ``not written: engine stalled``
(``files_not_written``), apart from ``files_bad``. The stall is declared a window after it
began, so checks that ended in between are moved over when it is (:meth:`RunStats.stall_began`);
:func:`count_records` applies the same rule to requests.jsonl.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from repro.load.codec import dumps_str


class _Histogram:
    """Fixed bins, O(1) memory: exact count, mean, min and max; quantiles to the bin width."""

    def __init__(self, n_bins: int) -> None:
        self.n_bins = n_bins
        self.counts = [0] * n_bins
        self.n = 0
        self.total = 0.0
        self.max: float | None = None
        self.min: float | None = None

    def _index(self, x: float) -> int:
        raise NotImplementedError

    def _value(self, i: int) -> float:
        raise NotImplementedError

    def add(self, x: float) -> None:
        self.n += 1
        self.total += x
        self.max = x if self.max is None or x > self.max else self.max
        self.min = x if self.min is None or x < self.min else self.min
        self.counts[min(max(self._index(x), 0), self.n_bins - 1)] += 1

    def quantile(self, q: float) -> float | None:
        if not self.n:
            return None
        target, acc = q * self.n, 0
        for i, c in enumerate(self.counts):
            acc += c
            if acc >= target and c:
                return min(max(self._value(i), self.min), self.max)  # type: ignore[type-var]
        return self.max

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    def merge(self, other: "_Histogram") -> None:
        """Add ``other``'s samples (same bins: the same class built with the same arguments)."""
        if len(other.counts) != len(self.counts):
            raise ValueError("histograms with different bins cannot be merged")
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.n += other.n
        self.total += other.total
        if other.max is not None:
            self.max = other.max if self.max is None else max(self.max, other.max)
        if other.min is not None:
            self.min = other.min if self.min is None else min(self.min, other.min)


class LogHistogram(_Histogram):
    """Log-spaced bins (latencies, client work): quantiles to about 2% relative error."""

    def __init__(self, lo: float = 1e-4, hi: float = 1e4, bins_per_decade: int = 50) -> None:
        self.lo, self.k = lo, bins_per_decade
        super().__init__(int(math.ceil(math.log10(hi / lo) * bins_per_decade)) + 2)

    def _index(self, x: float) -> int:
        return 0 if x <= self.lo else 1 + int(math.log10(x / self.lo) * self.k)

    def _value(self, i: int) -> float:
        return self.lo if i == 0 else self.lo * 10 ** ((i - 0.5) / self.k)

    def summary(self, digits: int = 4) -> dict[str, float | None]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, digits)

        return {"n": self.n, "mean": r(self.mean), "p50": r(self.quantile(0.5)), "p90": r(self.quantile(0.9)),
                "p99": r(self.quantile(0.99)), "max": r(self.max)}


class LinearHistogram(_Histogram):
    """Equal bins over [0, hi] (the fidelity ratio): quantiles to hi/bins."""

    def __init__(self, hi: float = 4.0, bins: int = 4000) -> None:
        self.width = hi / bins
        super().__init__(bins + 1)

    def _index(self, x: float) -> int:
        return int(x / self.width)

    def _value(self, i: int) -> float:
        return i * self.width


@dataclass
class RequestRecord:
    seq: int
    kind: str
    t_start: float  # seconds since the start of the load
    latency: float | None  # send to last byte of the final attempt (None: never answered)
    status: str  # ok | error | rejected (HTTP 400: the request itself is invalid) | timeout | cancelled
    attempts: int
    http_status: int | None = None
    error: str | None = None  # kind of the last error
    detail: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    file: dict[str, Any] | None = None  # check result: ok, error, bytes, shape, consumed, seconds, lock_wait
    handle: dict[str, Any] | None = None  # a handle into a store instead of a file (Mooncake): handle, bytes, error
    client_s: dict[str, float] = field(default_factory=dict)  # client-side work: prompt wait, file check

    def to_json(self) -> str:
        """The record's line in requests.jsonl: every field that is not None, in field order, compact
        (:func:`repro.load.codec.dumps_str`: msgspec when it is importable, else json; the same data)."""
        return dumps_str({k: v for k, v in self.__dict__.items() if v is not None})


NOT_WRITTEN_ERRORS = frozenset({"file-missing", "lock-timeout"})  # the file never appeared / its writer never finished
NOT_WRITTEN_STALLED = "engine stalled"


NOT_CHECKED = "cancelled"  # a file's check error when the run stopped before the check ran


def not_written_after_stall(file: dict[str, Any], stall_since: float | None) -> bool:
    """A failed check of a file the stalled engine never wrote: missing (or still locked) when the check ended,
    and the check ended at or after the stall began (both in seconds since the start of the load)."""
    if stall_since is None or file.get("ok") or file.get("error") not in NOT_WRITTEN_ERRORS:
        return False
    t_end = file.get("t_end")
    return isinstance(t_end, (int, float)) and t_end >= stall_since


class RunStats:
    """Live counters of the client (read by the monitor and the display)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.in_flight = 0  # HTTP requests on the wire
        self.in_check = 0  # file checks queued or running (hold no concurrency slot)
        self.started = 0  # requests begun (first attempt)
        self.finished = 0  # records written
        self.ok = 0
        self.failed = 0  # error after all retries
        self.rejected = 0  # HTTP 400 (and 413/422): the server refused the request as invalid, not a server failure
        self.rejected_detail: str | None = None  # the first rejection's message
        self.timeouts = 0  # client timeouts (each aborts the request on the server)
        self.cancelled = 0
        self.attempt_timeouts = 0  # timeouts of single attempts (retried or not)
        self.retries = 0
        self.completions = 0  # HTTP 200 responses (monitor's progress signal; counts before the file check)
        self.last_completion: float | None = None  # monotonic
        self.errors: Counter[str] = Counter()
        self.files_ok = 0
        self.files_bad = 0
        self.file_errors: Counter[str] = Counter()
        self.files_not_written = 0  # not written: engine stalled (see the module docstring)
        self.files_not_checked = 0  # answered, but the run stopped (Ctrl-C, a stall) before its check ran
        self.not_written_errors: Counter[str] = Counter()
        self.stall_since: float | None = None  # seconds since the load began, once a stall is declared
        self._unwritten: deque[tuple[float, str]] = deque(maxlen=10_000)  # (t_end, error) of bad missing files
        self.file_bytes = 0
        self.file_dtypes: Counter[str] = Counter()  # stored dtype of hidden_states, over files that were read
        self.consumed: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.latency = LogHistogram()
        self.check_s = LogHistogram()
        self.prompt_wait_s = LogHistogram()
        self.bookkeeping_s = LogHistogram()
        self.prep_s_total = 0.0
        self.prep_n = 0
        self.kinds: Counter[str] = Counter()
        self.handles = 0  # answers that named an object in a store (Mooncake), not a file
        self.bad_handles = 0
        self.observer: Callable[[RequestRecord], None] | None = None  # told of every finished record

    def finish(self, rec: RequestRecord, out: IO[str] | None) -> None:
        """Count a finished request and write its record (one place, so summary == requests.jsonl)."""
        t0 = time.perf_counter()
        self.finished += 1
        self.kinds[rec.kind] += 1
        if rec.status == "ok":
            self.ok += 1
        elif rec.status == "timeout":
            self.timeouts += 1
        elif rec.status == "cancelled":
            self.cancelled += 1
        elif rec.status == "rejected":
            self.rejected += 1
            if self.rejected_detail is None:
                self.rejected_detail = (rec.detail or "")[:300]
        else:
            self.failed += 1
        if rec.status != "ok" and rec.error:
            self.errors[rec.error] += 1
        if rec.latency is not None and rec.status == "ok":
            self.latency.add(rec.latency)
        self.prompt_tokens += rec.prompt_tokens or 0
        self.completion_tokens += rec.completion_tokens or 0
        f = rec.file
        if f is not None:
            if f.get("ok"):
                self.files_ok += 1
                self.consumed[f.get("consumed") or "?"] += 1
            elif f.get("error") == NOT_CHECKED:  # nothing is known of this file: neither verified nor bad
                self.files_not_checked += 1
            elif not_written_after_stall(f, self.stall_since):
                f["not_written"] = NOT_WRITTEN_STALLED
                self.files_not_written += 1
                self.not_written_errors[f["error"]] += 1
            else:
                self.files_bad += 1
                self.file_errors[f.get("error") or "?"] += 1
                if f.get("error") in NOT_WRITTEN_ERRORS and isinstance(f.get("t_end"), (int, float)):
                    self._unwritten.append((float(f["t_end"]), f["error"]))
            self.file_bytes += f.get("bytes") or 0
            if f.get("dtype"):
                self.file_dtypes[f["dtype"]] += 1
            if f.get("seconds") is not None:
                self.check_s.add(f["seconds"])
        if rec.handle is not None:
            self.handles += 1
            self.bad_handles += rec.handle.get("ok") is False
        if out is not None:
            out.write(rec.to_json() + "\n")
        self.bookkeeping_s.add(time.perf_counter() - t0)
        if self.observer is not None:
            self.observer(rec)

    #: counters summed over client processes by :meth:`merged` (the rest: histograms, Counters, first/last values)
    _SUMMED = ("in_flight", "in_check", "started", "finished", "ok", "failed", "rejected", "timeouts", "cancelled",
               "attempt_timeouts", "retries", "completions", "files_ok", "files_bad", "files_not_written",
               "files_not_checked", "file_bytes", "prompt_tokens", "completion_tokens", "prep_s_total", "prep_n",
               "handles", "bad_handles")
    _COUNTERS = ("errors", "file_errors", "not_written_errors", "file_dtypes", "consumed", "kinds")
    _HISTOGRAMS = ("latency", "check_s", "prompt_wait_s", "bookkeeping_s")

    @classmethod
    def merged(cls, parts: "list[RunStats]") -> "RunStats":
        """One run's counters from those of its client processes (``--client-procs``): sums, merged
        histograms, the earliest start and the latest completion."""
        out = cls()
        if not parts:
            return out
        out.t0 = min(p.t0 for p in parts)
        for name in cls._SUMMED:
            setattr(out, name, sum(getattr(p, name) for p in parts))
        for name in cls._COUNTERS:
            total: Counter[str] = Counter()
            for p in parts:
                total.update(getattr(p, name))
            setattr(out, name, +total)
        for name in cls._HISTOGRAMS:
            h = getattr(out, name)
            for p in parts:
                h.merge(getattr(p, name))
        lasts = [p.last_completion for p in parts if p.last_completion is not None]
        out.last_completion = max(lasts) if lasts else None
        out.rejected_detail = next((p.rejected_detail for p in parts if p.rejected_detail is not None), None)
        sinces = [p.stall_since for p in parts if p.stall_since is not None]
        out.stall_since = min(sinces) if sinces else None
        for p in parts:
            out._unwritten.extend(p._unwritten)
        return out

    def stall_began(self, since: float) -> None:
        """The run's stall began at ``since`` (seconds since the load began): files missing at or after it
        were not written by the stalled engine; move those already counted bad, and count later ones apart."""
        self.stall_since = since
        keep: deque[tuple[float, str]] = deque(maxlen=self._unwritten.maxlen)
        for t_end, err in self._unwritten:
            if t_end < since:
                keep.append((t_end, err))
                continue
            self.files_bad -= 1
            self.file_errors[err] -= 1
            if self.file_errors[err] <= 0:
                del self.file_errors[err]
            self.files_not_written += 1
            self.not_written_errors[err] += 1
        self._unwritten = keep

    def counts(self) -> dict[str, Any]:
        return {"total": self.finished, "ok": self.ok, "failed": self.failed, "rejected": self.rejected,
                "rejected_detail": self.rejected_detail, "timeouts": self.timeouts,
                "cancelled": self.cancelled, "retries": self.retries, "attempt_timeouts": self.attempt_timeouts,
                "errors": dict(self.errors), "by_kind": dict(self.kinds)}

    def files(self) -> dict[str, Any]:
        """The summary's ``files``: ``bad`` counts every file that did not pass, ``failed_check`` (read, and wrong)
        plus ``unverifiable`` (missing, unreadable, locked, no path in the response ...); ``bad`` and ``errors``
        leave out the files the stalled engine never wrote, which are ``not_written_engine_stalled`` (by check
        error in ``not_written_errors``)."""
        from repro.hsfiles.checker import FAILED_CHECK

        failed = sum(n for k, n in self.file_errors.items() if k in FAILED_CHECK)
        return {"verified": self.files_ok, "bad": self.files_bad, "failed_check": failed,
                "unverifiable": self.files_bad - failed, "errors": dict(self.file_errors),
                "not_written_engine_stalled": self.files_not_written,
                "not_written_errors": dict(self.not_written_errors), "not_checked": self.files_not_checked,
                "bytes": self.file_bytes, "consumed": dict(self.consumed), "dtypes": dict(self.file_dtypes),
                "handles": self.handles, "bad_handles": self.bad_handles}


def count_records(path: Path, stall_since: float | None = None) -> dict[str, int]:
    """Recount requests.jsonl (tests and `summary` checks): totals by status and verified files.

    ``stall_since``: the stall's ``since_s`` from summary.json; failed checks of files the stalled engine never
    wrote then count as ``files_not_written``, not ``files_bad`` (the rule of :class:`RunStats`)."""
    out: Counter[str] = Counter()
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            out["total"] += 1
            out[r["status"]] += 1
            fr = r.get("file")
            if fr is not None:
                if fr.get("ok"):
                    out["files_ok"] += 1
                elif fr.get("error") == NOT_CHECKED:
                    out["files_not_checked"] += 1
                elif not_written_after_stall(fr, stall_since):
                    out["files_not_written"] += 1
                else:
                    out["files_bad"] += 1
    return dict(out)
