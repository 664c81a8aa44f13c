"""Reporters: summary.md and the timeline plot. They read collected data; they never collect."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from repro.analyze.known import summary_lines as known_summary_lines


class StallRecord(Protocol):
    """What the reporters read of a stall: the fields of :class:`repro.capture.request.CaptureRequest` they use
    (capture hands its request; ``repro report`` builds one from a bundle's files). A protocol, so analysis never
    imports the capture stage that calls it."""

    reason: str
    detection: dict[str, Any] | None
    events: list[dict[str, Any]]
    timeline_csv: Path | None
    storage_accounting: dict[str, Any] | None


def _fmt_t(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "?"


def _epoch(v: Any) -> float | None:
    """Wall time from a number (epoch seconds) or an ISO-8601 UTC string (stress writes `...Z`)."""
    if isinstance(v, (int, float)) and v > 1e9:
        return float(v)
    if isinstance(v, str) and v:
        import datetime as dt

        try:
            return dt.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def stall_since(req: StallRecord) -> float | None:
    """When the stall began (wall time): the detector's verdict, else the first injected/detected stall event."""
    det = req.detection or {}
    for k in ("since_wall", "since", "stalled_since", "injected_wall"):
        t = _epoch(det.get(k))
        if t is not None:
            return t
    for e in req.events:
        if e.get("event") in ("stall", "stalled"):
            t = _epoch(e.get("wall")) or _epoch(e.get("t"))
            if t is not None:
                return t
    return None


def time_to_stall(detection: dict[str, Any] | None) -> float | None:
    """Seconds of load before the stall began (stress records it as `since_s`)."""
    det = detection or {}
    for k in ("time_to_stall", "since_s"):
        v = det.get(k)
        if isinstance(v, (int, float)):
            return float(v)
    return None


def summary_md(name: str, req: StallRecord, analysis: dict[str, Any], stacks: dict[str, Any],
               stats_lines: list[str], metrics: list[dict[str, Any]], storage: dict[str, Any] | None,
               errors: list[dict[str, str]]) -> str:
    det = req.detection or {}
    since = stall_since(req)
    lines = [f"# repro bundle {name}", ""]
    lines.append(f"- **Reason**: {req.reason}; classification: {det.get('class') or det.get('classification') or 'n/a'}")
    if since:
        lines.append(f"- **Stalled since**: {_fmt_t(since)} ({time.time() - since:.0f} s before this summary)")
    tts = time_to_stall(req.detection)
    if tts is not None:
        lines.append(f"- **Time to stall**: {tts:.0f} s of load")
    lines.append(f"- **Verdict**: {analysis.get('stuck_process') or '?'} is **{analysis.get('verdict')}**"
                 + (f" in `{analysis['stuck_frame']}`" if analysis.get("stuck_frame") else ""))
    lines.append(f"- **Signature**: `{analysis.get('signature') or 'none (no stacks)'}`")
    if analysis.get("cuda_wait"):
        lines.append(f"- **CUDA wait**: `{analysis['cuda_wait']}` (`--native` frames)")
    if (analysis.get("gpu") or {}).get("note"):
        lines.append(f"- **GPU**: {analysis['gpu']['note']}")
    if "known_matches" in analysis:
        lines.append(f"- **Known**: {known_summary_lines(analysis)[0].removeprefix('known: ')}")
    lines.append(f"- **Stacks**: {stacks.get('samples', 0)} samples of {stacks.get('processes', 0)} processes in "
                 f"{stacks.get('duration', 0):.1f} s")
    if stats_lines:
        lines.append(f"- **Last stats line**: `{stats_lines[-1].strip()}`")
    if metrics:
        m = metrics[-1]
        lines.append("- **Metrics (last)**: " + ", ".join(f"{k.split(':', 1)[-1]}={v:g}" for k, v in m.items()
                                                           if k != "t"))
    if storage and "files_waiting" in storage:
        lines.append(f"- **Storage** {storage['path']}: {storage['files_waiting']} files waiting "
                     f"({storage['bytes_waiting']} bytes, oldest {storage.get('oldest_age_s')} s), "
                     f"{storage.get('bytes_free')} bytes free, fs {((storage.get('mount') or {}).get('fs_type'))}")
    lines += ["", "## Threads", "", "| process | thread | verdict | stuck frame | CPU s / window s | state | wchan |",
              "|---|---|---|---|---|---|---|"]
    for p in analysis.get("processes", []):
        for t in p["threads"]:
            if not t["main"] and not any(st["tid"] == t["tid"] for st in analysis.get("stuck_threads", [])):
                continue  # vLLM's idle helper threads (zmq pollers, queue readers): in analysis.json
            lines.append(f"| {p['label']} ({p['pid']}) | {t['name']} | {t['verdict']} | `{t['stuck_frame']}` | "
                         f"{t['cpu_seconds']} / {t['window_seconds']} | {t['state']} | {t['wchan']} |")
    if errors:
        lines += ["", "## Collector failures (see errors.txt)", ""]
        lines += [f"- {e['what']}: {e['message']}" for e in errors]
    return "\n".join(lines) + "\n"


def _read_timeline_csv(path: Path) -> list[dict[str, float]]:
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                try:
                    row[(k or "").strip().lower()] = float(v)
                except (TypeError, ValueError):
                    continue
            rows.append(row)
    return rows


def _first_col(rows: list[dict[str, float]], *names: str) -> str | None:
    for n in names:
        if any(n in r for r in rows):
            return n
    return None


def _rates(t: list[float], totals: list[float]) -> list[float]:
    """Per-second rates of a counter; a counter that went down was reset (a restarted server): no rate there."""
    out = [float("nan")]
    for i in range(1, len(t)):
        dt = t[i] - t[i - 1]
        d = totals[i] - totals[i - 1]
        out.append(d / dt if dt > 0 and d >= 0 else float("nan"))
    return out


def timeline_series(req: StallRecord, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Series for the plot: from the run's timeline CSV when given, else from the /metrics samples taken.

    Stress's timeline.csv has `wall` (epoch s), `server_running`, `server_waiting`, `prompt_tokens_total`,
    `generation_tokens_total` and `ok` (client completions); other spellings are accepted too. With a known
    hidden-state store it also has `orphan_files`, `store_bytes` and `fs_free_bytes` (the storage panel); without
    them, the run's census growth curve (``storage_accounting``) gives that panel.
    """
    out = _timeline_series(req, metrics)
    if not any(k in out for k in STORAGE_KEYS):
        curve = (req.storage_accounting or {}).get("growth_curve") or []
        pts = [p for p in curve if isinstance(p.get("t"), (int, float))]
        if pts:
            out["storage_t"] = [float(p["t"]) for p in pts]
            for key, name in (("orphan_files", "orphan_files"), ("store_bytes", "bytes"),
                              ("fs_free_bytes", "fs_free_bytes")):
                out[key] = [float(p.get(name, float("nan"))) for p in pts]
            if not out.get("t"):  # a dead server answered no /metrics during capture: the census alone
                out = {"t": out["storage_t"], "source": "the storage census (no /metrics samples)",
                       **{k: out[k] for k in ("storage_t", *STORAGE_KEYS)}}
    return out


STORAGE_KEYS = ("orphan_files", "store_bytes", "fs_free_bytes")


def series_from_timeline_csv(path: Path) -> dict[str, Any] | None:
    """The plot's series from a timeline.csv (stress's, watch's, or another spelling); None without a time column."""
    nan = float("nan")
    rows = _read_timeline_csv(Path(path))
    tcol = _first_col(rows, "wall", "timestamp", "ts", "time", "t")
    if not tcol:
        return None
    rows = [r for r in rows if tcol in r]
    t = [r[tcol] for r in rows]
    out: dict[str, Any] = {"t": t, "source": Path(path).name}
    for key, names in (("running", ("server_running", "running", "num_requests_running")),
                       ("waiting", ("server_waiting", "waiting", "num_requests_waiting")),
                       ("gen_tps", ("gen_tps", "generation_tps")),
                       ("prompt_tps", ("prompt_tps",)),
                       ("completed", ("ok", "completed", "completions", "client_completed")),
                       *((k, (k,)) for k in STORAGE_KEYS)):
        col = _first_col(rows, *names)
        if col:
            out[key] = [r.get(col, nan) for r in rows]
    for key, col in (("gen_tps", "generation_tokens_total"), ("prompt_tps", "prompt_tokens_total")):
        if key not in out and _first_col(rows, col):
            out[key] = _rates(t, [r.get(col, nan) for r in rows])
    return out


def _timeline_series(req: StallRecord, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    nan = float("nan")
    if req.timeline_csv and Path(req.timeline_csv).exists():
        series = series_from_timeline_csv(Path(req.timeline_csv))
        if series is not None:
            return series
    ms = sorted((m for m in metrics if "t" in m), key=lambda m: m["t"])
    t = [m["t"] for m in ms]
    out = {"t": t, "source": "/metrics samples taken during capture"}
    out["running"] = [m.get("vllm:num_requests_running", nan) for m in ms]
    out["waiting"] = [m.get("vllm:num_requests_waiting", nan) for m in ms]
    out["gen_tps"] = _rates(t, [m.get("vllm:generation_tokens_total", nan) for m in ms])
    out["prompt_tps"] = _rates(t, [m.get("vllm:prompt_tokens_total", nan) for m in ms])
    out["completed"] = [m.get("vllm:request_success_total", nan) for m in ms]
    return out


def _has_storage(series: dict[str, Any]) -> bool:
    return any(any(v == v for v in series.get(k) or []) for k in STORAGE_KEYS)  # v == v: not NaN


def _storage_panel(ax: Any, series: dict[str, Any], x: list[float]) -> None:
    """Store bytes and free bytes (MB, left axis) and orphaned files (count, right axis) over time."""
    for key, label in (("store_bytes", "hidden-state files (MB)"), ("fs_free_bytes", "filesystem free (MB)")):
        if key in series:
            ax.plot(x, [v / 1e6 for v in series[key]], marker=".", label=label)
    ax.set_ylabel("store MB")
    ax.legend(loc="upper left", fontsize=8)
    if "orphan_files" in series:
        ax2 = ax.twinx()
        ax2.plot(x, series["orphan_files"], color="tab:red", linestyle=":", marker=".", label="orphaned files")
        ax2.set_ylabel("orphans")
        ax2.legend(loc="upper right", fontsize=8)


BAND_COLORS = {"suspect": "gold", "stalled": "red", "down": "gray"}


def timeline_figure(series: dict[str, Any], stall_t: float | None, title: str, *,
                    concurrency: float | None = None, bands: Sequence[tuple[float, float, str]] = (),
                    marks: Sequence[tuple[float, str] | tuple[float, str, str]] = ()) -> Any:
    """The timeline figure (matplotlib): requests, token rates, completions, and storage when the run has it.

    Optional, in the series' time base (wall seconds): ``concurrency`` draws the configured concurrency over the
    server's running/waiting (fidelity); ``bands`` shades detector states (``(t0, t1, "suspect"|"stalled")``);
    ``marks`` draws labelled vertical lines (``(t, label)`` or ``(t, label, color)``: restarts, stalls)."""
    t = series.get("t") or []
    if len(t) < 1:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = t[0]
    x = [v - t0 for v in t]
    storage = _has_storage(series)
    fig, axes = plt.subplots(4 if storage else 3, 1, figsize=(8, 8 if storage else 6), sharex=True, dpi=80)
    panels = ((("running", "running"), ("waiting", "waiting")), (("gen_tps", "generation tok/s"),
                                                                   ("prompt_tps", "prompt tok/s")))
    for ax, keys, ylabel, step in zip(axes, panels, ("server requests", "tokens/s"), (True, False)):
        for key, label in keys:
            if key in series:
                if step:
                    ax.step(x, series[key], where="post", label=label)
                else:
                    ax.plot(x, series[key], marker=".", label=label)
        if step and concurrency is not None:
            ax.axhline(concurrency, color="gray", linestyle="--", linewidth=1,
                       label=f"configured concurrency {concurrency:g}")
        ax.set_ylabel(ylabel)
        if ax.get_lines():
            ax.legend(loc="upper left", fontsize=8)
    ax = axes[2]
    if "completed" in series:
        ax.plot(x, series["completed"], marker=".", label="completions (client, else server)")
    ax.set_ylabel("completed")
    if storage:
        _storage_panel(axes[3], series, [v - t0 for v in series.get("storage_t", t)])
    axes[-1].set_xlabel(f"seconds since {_fmt_t(t0)}  (source: {series.get('source')})")
    for b0, b1, state in bands:
        for a in axes:
            a.axvspan(b0 - t0, b1 - t0, color=BAND_COLORS.get(state, "gray"), alpha=0.15, linewidth=0)
    for mark in marks:
        mt, label = mark[0], mark[1]
        color = mark[2] if len(mark) > 2 else "tab:purple"  # type: ignore[misc]
        for a in axes:
            a.axvline(mt - t0, color=color, linestyle=":", linewidth=1.2)
        axes[0].annotate(label, (mt - t0, 1), xycoords=("data", "axes fraction"), color=color, fontsize=8,
                         rotation=90, va="top", ha="right")
    if stall_t is not None:
        for a in axes:
            a.axvline(stall_t - t0, color="red", linestyle="--", linewidth=1)
        axes[0].annotate("stall", (stall_t - t0, 0), color="red", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def render_timeline_png(series: dict[str, Any], stall_t: float | None, title: str, **marks: Any) -> bytes | None:
    """timeline.png; ``marks``: timeline_figure's optional concurrency, bands and marks."""
    fig = timeline_figure(series, stall_t, title, **marks)
    if fig is None:
        return None
    return figure_png(fig)


def write_timeline(w: Any, req: StallRecord, metrics: list[dict[str, Any]], analysis: dict[str, Any]) -> bool:
    t0 = time.monotonic()
    try:
        series = timeline_series(req, metrics)
        png = render_timeline_png(series, stall_since(req), f"{w.dir.name}: {analysis.get('verdict')} "
                                                            f"{analysis.get('stuck_process') or ''}")
    except Exception as exc:  # noqa: BLE001 - a plot must not cost the bundle
        w.error("timeline plot", f"could not draw the timeline: {exc!r}")
        return False
    if png is None:
        w.record("timeline plot", command=None, exit_code=None, duration=time.monotonic() - t0, output=None,
                 skipped="no timeline data (no --url and no timeline.csv)")
        return False
    w.write_bytes("timeline.png", png)
    w.record("timeline plot", command=None, exit_code=0, duration=time.monotonic() - t0, output="timeline.png",
             source=series.get("source"))
    return True
