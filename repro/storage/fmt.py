"""How storage figures are written in messages and reports: bytes and spans of time, short and human."""

from __future__ import annotations


def fmt_bytes(n: float | None) -> str:
    """36864 -> '37 kB', 3076096 -> '3.1 MB', 2.5e9 -> '2.50 GB'."""
    if n is None:
        return "?"
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.0f} kB"


def fmt_span(s: float | None) -> str:
    """Seconds under 2 min, minutes under 2 h, hours beyond."""
    if s is None:
        return "?"
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"
