"""Helpers every report builder uses: units, exposure, detector bands, event and file tables."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from repro.analyze.report import _epoch
from repro.bisect.stats import rate_upper_bound
from repro.report.model import Table
from repro.units import format_bytes, format_duration, format_hours as hours

BAD_STATES = ("suspect", "stalled")
MAX_EVENT_ROWS = 200


def dur(seconds: float | None) -> str:
    return "?" if seconds is None else format_duration(max(0.0, float(seconds)))


def num(v: Any, fmt: str = "{:g}") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return fmt.format(v) if isinstance(v, (int, float)) else str(v)


def exposure_note(exposure_s: float, where: str) -> str:
    """What a clean run is worth: the 95% upper bound on the hang rate it leaves (chi-square, 0 hangs)."""
    if exposure_s <= 0:
        return f"no exposure at {where}: nothing is known about the hang rate there"
    up = rate_upper_bound(0, exposure_s) * 3600.0
    return (f"No hang in {hours(exposure_s)} ({dur(exposure_s)}) at {where}: at 95% confidence the hang rate there is "
            f"below {up:.3g}/h (a mean time to hang of at least {dur(exposure_s / 3.0)}). Clean exposure of the same "
            f"configuration adds up across runs; a rate 10x lower needs 10x the hours.")


def timeline_rows(path: Path) -> list[dict[str, str]]:
    """timeline.csv as strings (a half-written last row is dropped)."""
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    if rows and None in rows[-1].values():
        rows.pop()
    return rows


def state_bands(rows: list[dict[str, str]], time_col: str) -> list[tuple[float, float, str]]:
    """Contiguous rows whose detector state is suspect or stalled, as (start, end, state) in ``time_col``."""
    bands: list[tuple[float, float, str]] = []
    cur: tuple[float, str] | None = None
    last_t: float | None = None
    for r in rows:
        try:
            t = float(r.get(time_col) or "")
        except ValueError:
            continue
        state = (r.get("state") or "").strip()
        if cur is not None and state != cur[1]:
            bands.append((cur[0], t, cur[1]))
            cur = None
        if cur is None and state in BAD_STATES:
            cur = (t, state)
        last_t = t
    if cur is not None and last_t is not None:
        bands.append((cur[0], max(last_t, cur[0] + 0.5), cur[1]))
    return bands


def _brief(fields: dict[str, Any], skip: tuple[str, ...]) -> str:
    parts = []
    for k, v in fields.items():
        if k in skip or v is None or v == "" or v == [] or v == {}:
            continue
        if k == "evidence" and isinstance(v, dict):
            v = "; ".join(v.get("reasons") or []) or "(see events.jsonl)"
        if k == "detection" and isinstance(v, dict):
            continue
        if isinstance(v, (dict, list)):
            v = json.dumps(v, default=str, separators=(",", ":"))
        s = str(v)
        parts.append(f"{k}={s if len(s) <= 160 else s[:157] + '...'}")
    return ", ".join(parts)


def events_table(events: list[dict[str, Any]], t_of: Any, skip_kinds: tuple[str, ...] = ("probe",),
                 skip_fields: tuple[str, ...] = ("t", "wall", "time", "seq", "event"),
                 restart_kinds: tuple[str, ...] = ("restart",)) -> Table:
    """One row per event (t, event, what it says); ``t_of(event)`` gives the time column's text."""
    rows, classes, left = [], [], 0
    skipped: dict[str, int] = {}
    for e in events:
        kind = str(e.get("event"))
        if kind in skip_kinds:
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        if len(rows) >= MAX_EVENT_ROWS:
            left += 1
            continue
        rows.append([t_of(e), kind, _brief(e, skip_fields)])
        state = e.get("state")
        classes.append("stall" if kind in ("stall", "detect", "give-up") or state == "stalled" else
                       "restart" if kind in restart_kinds else
                       "warning" if state == "suspect" or "warning" in kind or kind.startswith("storage")
                       or kind == "abort-storm" else "")
    cap = []
    if left:
        cap.append(f"{left} more events in events.jsonl")
    cap += [f"{n} {k} events not listed" for k, n in skipped.items()]
    return Table(["t", "event", "details"], rows, "; ".join(cap), classes)


def files_table(d: Path, names: list[str] | None = None) -> Table:
    """The run directory's top-level files and folders with their sizes."""
    rows = []
    try:
        entries = sorted(d.iterdir(), key=lambda p: p.name)
    except OSError:
        entries = []
    for p in entries:
        if names is not None and p.name not in names:
            continue
        if p.is_dir():
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            rows.append([p.name + "/", format_bytes(size)])
        elif p.is_file():
            rows.append([p.name, format_bytes(p.stat().st_size)])
    return Table(["file", "size"], rows)


def wall_of(v: Any) -> float | None:
    """Epoch seconds from an epoch number or an ISO-8601 string."""
    return _epoch(v)
