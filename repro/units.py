"""Human units: durations ("6h", "90m", "1h30m", "45s", "120") and sizes ("20MB"), parsed and written."""

from __future__ import annotations

import re

from repro.errors import UsageError

_DUR_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|hr|d)?", re.I)
_DUR_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0, "d": 86400.0}


def parse_duration(text: str | float | int, what: str = "duration") -> float:
    """Return seconds for '6h', '90m', '1h30m', '45s', '2.5' (seconds). Raise UsageError otherwise."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        pos, value, matched = 0, 0.0, False
        while pos < len(s):
            m = _DUR_PART.match(s, pos)
            if not m or m.end() == pos:
                matched = False
                break
            value += float(m.group(1)) * _DUR_UNITS[m.group(2)]
            pos, matched = m.end(), True
        if not matched:
            raise UsageError(f"cannot parse {what} {text!r}: use a number of seconds or e.g. 30s, 90m, 6h, 1h30m")
    if value < 0:
        raise UsageError(f"{what} must not be negative, got {text!r}")
    return value


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1024, "m": 1e6, "mb": 1e6, "mib": 1024**2,
               "g": 1e9, "gb": 1e9, "gib": 1024**3, "t": 1e12, "tb": 1e12, "tib": 1024**4}


def parse_size(text: str | int, what: str = "size") -> int:
    """Return bytes for '20MB', '512MiB', '1G', '1000'."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text).strip())
    unit = (m.group(2) or "").lower() if m else None
    if not m or unit not in _SIZE_UNITS:
        raise UsageError(f"cannot parse {what} {text!r}: use e.g. 20MB, 512MiB, 2GB")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def format_bytes(n: float | None) -> str:
    """36864 -> '37 kB', 3076096 -> '3.1 MB', 2.5e9 -> '2.50 GB'."""
    if n is None:
        return "?"
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.0f} kB"


def format_span(s: float | None) -> str:
    """Seconds under 2 min, minutes under 2 h, hours beyond."""
    if s is None:
        return "?"
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def format_hours(seconds: float) -> str:
    """Exposure in hours, the unit of the hang-rate statistics: '0.17 h', '2.5 h', '36 h'."""
    h = max(0.0, seconds) / 3600.0
    if h >= 10:
        return f"{h:.0f} h"
    if h >= 1:
        return f"{h:.1f} h"
    return f"{h:.2g} h"
