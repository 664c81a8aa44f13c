"""The report of a `repro watch` run directory (watch.json, events.jsonl, timeline.csv, bundle-NNN/)."""

from __future__ import annotations

import time
from typing import Any

from repro.analyze.report import render_timeline_png, series_from_timeline_csv
from repro.formats import EVENTS_FORMAT, WATCH_FORMAT, check_lines, read_optional
from repro.report.common import dur, events_table, exposure_note, files_table, hours, num, state_bands, timeline_rows
from repro.report.model import CLEAN, STALL, Facts, Figure, Paragraph, Report, Table
from repro.monitor.events import epoch_of
from repro.report.sources import RunDir, read_jsonl


def _clock(t: Any) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t)) if isinstance(t, (int, float)) else "?"


def restarts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per stall: when it began and was detected, the capture, the stop, the back-off, the restart,
    and how long the server was down (detected -> healthy again)."""
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for e in events:
        kind, t = e.get("event"), e.get("t")
        if kind == "detect":
            det = e.get("detection") or {}
            cur = {"n": e.get("n", len(out) + 1), "class": e.get("class"), "detected": t,
                   "since": det.get("since_wall"), "reasons": e.get("reasons") or []}
            out.append(cur)
        elif cur is None:
            continue
        elif kind == "capture":
            cur["capture"] = e.get("status")
            cur["bundle"] = e.get("tarball") or e.get("dir")
            cur["verdict"] = e.get("verdict")
        elif kind == "stop":
            cur["stop"] = e.get("method") or "stopped"
        elif kind == "backoff":
            cur["backoff"] = e.get("seconds")
        elif kind in ("start", "restart") and "restarted" not in cur:
            cur["restarted"] = t
        elif kind == "healthy":
            cur["healthy"] = t
            if isinstance(t, (int, float)) and isinstance(cur.get("detected"), (int, float)):
                cur["down_s"] = t - cur["detected"]
            cur = None
        elif kind == "give-up":
            cur["gave_up"] = e.get("message") or e.get("reason")
    return out


def _clip(b0: float, b1: float, down: list[tuple[float, float, str]]) -> float:
    """A detector band ends where the server went down (the next row is only written by the restarted one)."""
    for d0, _d1, _ in down:
        if b0 <= d0 < b1:
            return d0
    return b1


def build(rd: RunDir) -> Report:
    d = rd.path
    meta = read_optional(WATCH_FORMAT, d / "watch.json") or {}
    raw = read_jsonl(d / "events.jsonl")
    if raw:
        check_lines(EVENTS_FORMAT, raw[0], str(d / "events.jsonl"))
    events = epoch_of(raw)  # t as epoch seconds, whatever the file's version
    rows = timeline_rows(d / "timeline.csv")
    t_first = next((e["t"] for e in events if isinstance(e.get("t"), (int, float))), None)
    t_last = next((e["t"] for e in reversed(events) if isinstance(e.get("t"), (int, float))), None)
    if rows:
        try:
            t_last = max(t_last or 0.0, float(rows[-1]["wall"]))
        except (KeyError, ValueError):
            pass
    watched = (t_last - t_first) if t_first is not None and t_last is not None else 0.0
    rs = restarts(events)
    down = sum(r.get("down_s") or 0.0 for r in rs)
    healthy_t = next((e["t"] for e in events if e.get("event") in ("healthy", "attached")), t_first)
    exposure = max(0.0, (t_last - healthy_t) - down) if t_last is not None and healthy_t is not None else 0.0
    running = [float(r["server_running"]) for r in rows if r.get("server_running") not in (None, "")]
    mean_running = sum(running) / len(running) if running else None
    stop = next((e for e in reversed(events) if e.get("event") == "watch-stop"), None)
    gave_up = next((e for e in events if e.get("event") == "give-up"), None)
    n_restarts = sum(1 for r in rs if r.get("restarted") is not None)
    load = f"the server running {mean_running:.1f} requests on average" if mean_running is not None else "load unknown"
    if not rs:
        status, headline = CLEAN, f"clean: {hours(exposure)} watched, no stall ({load})"
    elif gave_up is not None:
        status, headline = STALL, (f"gave up: {len(rs)} stall(s), {n_restarts} restart(s) in {dur(watched)} watched")
    else:
        status, headline = STALL, f"{len(rs)} stall(s), {n_restarts} restart(s) in {dur(watched)} watched"
    rep = Report("watch", f"repro watch: {d.name}", status, headline, str(rd.given))
    rep.notes.append(f"watching {meta.get('mode', '?')} {meta.get('target_url', '')}; "
                     f"{dur(exposure)} with a server up, {dur(down)} down for restarts")
    if status == CLEAN:
        rep.notes.append(exposure_note(exposure, f"this server's load ({load})"))
    if gave_up is not None:
        rep.notes.append(str(gave_up.get("message") or "gave up"))
    if stop is not None:
        rep.notes.append(f"watch ended: {stop.get('reason')} (exit code {stop.get('exit_code')})")

    sec = rep.section("Timeline")
    series = series_from_timeline_csv(d / "timeline.csv") if rows else None
    marks: list[tuple[float, str, str]] = []
    for r in rs:
        since = r.get("since")
        if isinstance(since, (int, float)):
            marks.append((since, f"stall {r['n']}", "red"))
        if isinstance(r.get("restarted"), (int, float)):
            marks.append((r["restarted"], f"restart {r['n']}", "tab:purple"))
    down_bands = [(r["detected"], r["healthy"], "down") for r in rs
                  if isinstance(r.get("detected"), (int, float)) and isinstance(r.get("healthy"), (int, float))]
    bands = [(b0, _clip(b0, b1, down_bands), state) for b0, b1, state in state_bands(rows, "wall")] + down_bands
    if series and series.get("t"):
        png = render_timeline_png(series, None, f"{d.name}: {headline}", bands=bands, marks=marks)
        if png:
            rep.timeline_png = png
            sec.add(Figure("timeline", png, "What the watchdog saw on /metrics (timeline.csv, a row every few "
                                            "seconds): running/waiting, token rates, completed requests (the "
                                            "server's counter, which starts again at each restart). Red dotted: "
                                            "a stall began; purple: a restart; gray: the server was down; "
                                            "yellow/red shading: detector suspect/stalled."))
    else:
        sec.add(Paragraph("no timeline.csv in this run directory (written by repro watch since the report was "
                          "added): the events below are all there is"))
    if rs:
        rep.section("Stalls and restarts").add(Table(
            ["#", "class", "began", "detected", "capture", "bundle", "stop", "back-off", "restarted", "down"],
            [[str(r["n"]), str(r.get("class")), _clock(r.get("since")), _clock(r.get("detected")),
              f"{r.get('capture', '-')}" + (f" ({r['verdict']})" if r.get("verdict") else ""),
              str(r.get("bundle") or "-"), str(r.get("stop") or "-"), num(r.get("backoff"), "{:g} s"),
              _clock(r.get("restarted")), dur(r.get("down_s")) if r.get("down_s") is not None else "-"]
             for r in rs],
            "times in UTC; down: from the detection until the restarted server answered",
            ["stall" if r.get("gave_up") else "restart" for r in rs]))
    w = meta.get("watch") or {}
    det = w.get("detect") or {}
    pol = w.get("policy") or {}
    rep.section("Watch").add(Facts([
        ("target", f"{meta.get('mode')} {meta.get('target_url')}"),
        ("detector", f"window {num(det.get('window'))} s, {det.get('min_bad_evaluations')} bad evaluations, "
                     f"poll {num(det.get('poll_interval'))} s, probe {'on' if w.get('probe') else 'off'}"),
        ("restarts", f"at most {pol.get('max_restarts')} within an hour, back-off {num(pol.get('backoff_initial'))} s "
                     f"doubling to {num(pol.get('backoff_max'))} s"),
        ("capture", "on" if w.get("capture") else "off"),
        ("watched", f"{dur(watched)} from {_clock(t_first)} to {_clock(t_last)} UTC"),
    ]))
    rep.section("Events").add(events_table(events, lambda e: _clock(e.get("t")),
                                           restart_kinds=("start", "restart", "healthy")))
    rep.section("Files").add(files_table(d))
    return rep
