"""requests.jsonl binned over time, in one streaming pass and bounded memory.

Each request lands in the bucket of the moment it ended (start + latency; its start when it
never got an answer). Per bucket: completions, failures, timeouts, latency percentiles of the
completed ones (the kit's log histogram), and the hidden-state file checks (verified, bad,
not written by a stalled engine).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from repro.load.records import NOT_CHECKED, LogHistogram, not_written_after_stall

NICE_WIDTHS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)


def bucket_width(span_s: float, max_buckets: int = 240) -> float:
    """The smallest of 1 s, 2 s, 5 s, ... 4 h that cuts ``span_s`` into at most ``max_buckets`` buckets."""
    for w in NICE_WIDTHS:
        if span_s / w <= max_buckets:
            return float(w)
    return float(math.ceil(span_s / max_buckets))


@dataclass
class _Bucket:
    ok: int = 0
    failed: int = 0
    timeouts: int = 0
    files_ok: int = 0
    files_bad: int = 0
    files_not_written: int = 0
    latency: LogHistogram = field(default_factory=LogHistogram)


@dataclass
class RequestSeries:
    width: float  # seconds per bucket
    t: list[float]  # bucket starts, seconds since the load began
    ok: list[int]
    failed: list[int]  # errors after all retries (timeouts included)
    timeouts: list[int]
    p50: list[float | None]
    p90: list[float | None]
    p99: list[float | None]
    files_ok: list[int]
    files_bad: list[int]
    files_not_written: list[int]
    total: int = 0
    error_kinds: Counter[str] = field(default_factory=Counter)
    file_errors: Counter[str] = field(default_factory=Counter)
    skipped_lines: int = 0

    @property
    def has_files(self) -> bool:
        return any(self.files_ok) or any(self.files_bad) or any(self.files_not_written)


_OK = re.compile(r'"t_start":(-?[0-9.eE+]+),"latency":([0-9.eE+-]+),"status":"ok"')


def _fast(line: str) -> tuple[float, float, bool] | None:
    """(start, latency, file verified) of a record that completed and whose file (if any) was verified, read
    without parsing the JSON: RequestRecord.to_json writes its fields in order and compact, and in JSON a quote
    inside a string is escaped, so this cannot match inside a value. None for anything else (parsed in full)."""
    m = _OK.search(line)
    if m is None:
        return None
    file_ok = '"file":{"ok":true' in line
    if not file_ok and '"file":' in line:
        return None
    try:
        return float(m.group(1)), float(m.group(2)), file_ok
    except ValueError:
        return None


def _bucket(buckets: dict[int, _Bucket], end: float, width: float) -> _Bucket:
    k = max(0, int(end // width))
    b = buckets.get(k)
    if b is None:
        b = buckets[k] = _Bucket()
    return b


def bin_requests(path: Path, span_s: float, stall_since: float | None = None,
                 max_buckets: int = 240) -> RequestSeries:
    """Bin ``path`` (requests.jsonl) into buckets over ``span_s`` seconds (later ends widen the range)."""
    width = bucket_width(max(span_s, 1.0), max_buckets)
    buckets: dict[int, _Bucket] = {}
    total = skipped = 0
    kinds: Counter[str] = Counter()
    file_errors: Counter[str] = Counter()
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except OSError:
        f = None
    if f is not None:
        with f:
            for line in f:
                fast = _fast(line)
                if fast is not None:  # the common case, a verified request: no JSON parse
                    t, lat, file_ok = fast
                    total += 1
                    b = _bucket(buckets, t + lat, width)
                    b.ok += 1
                    b.latency.add(lat)
                    if file_ok:
                        b.files_ok += 1
                    continue
                try:
                    r = json.loads(line)
                    t = float(r.get("t_start") or 0.0)
                except (ValueError, TypeError, AttributeError):
                    skipped += 1
                    continue
                total += 1
                lat = r.get("latency")
                b = _bucket(buckets, t + (lat if isinstance(lat, (int, float)) else 0.0), width)
                status = r.get("status")
                if status == "ok":
                    b.ok += 1
                    if isinstance(lat, (int, float)):
                        b.latency.add(float(lat))
                elif status != "cancelled":
                    b.failed += 1
                    kinds[str(r.get("error") or status)] += 1
                    if status == "timeout":
                        b.timeouts += 1
                fr = r.get("file")
                if isinstance(fr, dict):
                    if fr.get("ok"):
                        b.files_ok += 1
                    elif fr.get("error") == NOT_CHECKED:  # the run stopped before the check ran
                        pass
                    elif not_written_after_stall(fr, stall_since):
                        b.files_not_written += 1
                    else:
                        b.files_bad += 1
                        file_errors[str(fr.get("error") or "?")] += 1
    n = max(buckets) + 1 if buckets else 0
    rows = [buckets.get(i) or _Bucket() for i in range(n)]
    return RequestSeries(
        width=width, t=[i * width for i in range(n)], ok=[b.ok for b in rows], failed=[b.failed for b in rows],
        timeouts=[b.timeouts for b in rows], p50=[b.latency.quantile(0.5) for b in rows],
        p90=[b.latency.quantile(0.9) for b in rows], p99=[b.latency.quantile(0.99) for b in rows],
        files_ok=[b.files_ok for b in rows], files_bad=[b.files_bad for b in rows],
        files_not_written=[b.files_not_written for b in rows], total=total, error_kinds=kinds,
        file_errors=file_errors, skipped_lines=skipped)
