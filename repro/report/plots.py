"""Figures of a report beside the timeline (which is :func:`repro.analyze.report.timeline_figure`).

``requests_png``: what the client saw, per time bucket (throughput, latency percentiles, errors, files).
``bisect_png``: a bisect search's decision path (configuration tested, outcome, exposure).
Both return PNG bytes, or None when there is nothing to draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from repro.analyze.report import BAND_COLORS, figure_png
from repro.report.requests import RequestSeries


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def _decorate(axes: Sequence[Any], stall_s: float | None, bands: Sequence[tuple[float, float, str]],
              marks: Sequence[tuple[float, str]]) -> None:
    for b0, b1, state in bands:
        for a in axes:
            a.axvspan(b0, b1, color=BAND_COLORS.get(state, "gray"), alpha=0.15, linewidth=0)
    for mt, _label in marks:
        for a in axes:
            a.axvline(mt, color="tab:purple", linestyle=":", linewidth=1.2)
    if stall_s is not None:
        for a in axes:
            a.axvline(stall_s, color="red", linestyle="--", linewidth=1)
        axes[0].annotate("stall", (stall_s, 1), xycoords=("data", "axes fraction"), color="red", fontsize=8,
                         va="top")


def requests_png(rs: RequestSeries, title: str, stall_s: float | None = None,
                 bands: Sequence[tuple[float, float, str]] = (), marks: Sequence[tuple[float, str]] = ()) -> bytes | None:
    """Throughput, latency p50/p90/p99, errors and file checks per bucket; x = seconds since the load began."""
    if not rs.t:
        return None
    plt = _pyplot()
    n = 4 if rs.has_files else 3
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.0 * n + 0.6), sharex=True, dpi=100)
    x = [t + rs.width / 2 for t in rs.t]
    w = rs.width
    ax = axes[0]
    ax.plot(x, [v / w for v in rs.ok], marker=".", label="completed /s")
    if any(rs.failed):
        ax.plot(x, [v / w for v in rs.failed], marker=".", color="tab:red", label="failed /s")
    ax.set_ylabel("requests/s")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[1]
    for q, vals, style in (("p50", rs.p50, "-"), ("p90", rs.p90, "--"), ("p99", rs.p99, ":")):
        ax.plot(x, [_nan(v) for v in vals], linestyle=style, marker=".", label=f"latency {q}")
    if any(v is not None for v in rs.p50):
        ax.set_yscale("log")
    ax.set_ylabel("seconds")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[2]
    ax.bar(x, rs.failed, width=w * 0.9, color="tab:red", label="failed (all retries spent)")
    ax.bar(x, rs.timeouts, width=w * 0.9, color="tab:orange", label="of which client timeouts (aborted)")
    ax.set_ylabel(f"errors per {w:g} s")
    ax.legend(loc="upper left", fontsize=8)
    if rs.has_files:
        ax = axes[3]
        ax.plot(x, rs.files_ok, marker=".", color="tab:green", label="files verified")
        if any(rs.files_bad):
            ax.bar(x, rs.files_bad, width=w * 0.9, color="tab:red", label="files bad")
        if any(rs.files_not_written):
            ax.bar(x, rs.files_not_written, width=w * 0.9, color="tab:gray", label="not written: engine stalled")
        ax.set_ylabel(f"files per {w:g} s")
        ax.legend(loc="upper left", fontsize=8)
    _decorate(axes, stall_s, bands, marks)
    axes[-1].set_xlabel(f"seconds since the load began (buckets of {w:g} s, by the time each request ended)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return figure_png(fig)


def bisect_png(steps: Sequence[dict[str, Any]], title: str) -> bytes | None:
    """One point per step: concurrency tested against cumulative trial-hours, red x hang, green o clean,
    gray skipped; the bars below are each step's exposure. ``steps``: dicts with concurrency, changes,
    exposure_s, trial_s, outcome (hang | clean | skipped | open)."""
    if not steps:
        return None
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 5.4), dpi=100, sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1.3]})
    cum, xs = 0.0, []
    for s in steps:
        xs.append(cum / 3600.0)
        cum += float(s.get("trial_s") or s.get("exposure_s") or 0.0)
    styles = {"hang": ("x", "tab:red"), "clean": ("o", "tab:green"), "skipped": ("s", "tab:gray"),
              "open": ("^", "tab:blue")}
    ax.plot(xs, [s.get("concurrency") or 0 for s in steps], color="lightgray", linewidth=1, zorder=1)
    seen: set[str] = set()
    for x, s in zip(xs, steps):
        m, c = styles.get(s["outcome"], ("o", "black"))
        ax.scatter([x], [s.get("concurrency") or 0], marker=m, color=c, s=60, zorder=2,
                   label=s["outcome"] if s["outcome"] not in seen else None)
        seen.add(s["outcome"])
        ax.annotate(f"{s['step']}:{len(s.get('changes') or [])}", (x, s.get("concurrency") or 0),
                    textcoords="offset points", xytext=(4, 5), fontsize=7)
    ax.set_ylabel("concurrency tested")
    ax.legend(loc="upper right", fontsize=8, title="step:changes", title_fontsize=7)
    ax2.bar(xs, [float(s.get("exposure_s") or 0.0) / 3600.0 for s in steps],
            width=max(cum / 3600.0 / max(len(steps), 1) * 0.6, 1e-3), align="edge",
            color=[styles.get(s["outcome"], ("o", "black"))[1] for s in steps])
    ax2.set_ylabel("exposure h")
    ax2.set_xlabel("trial-hours spent before the step")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return figure_png(fig)
