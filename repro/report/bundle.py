"""The report of a capture bundle (directory or .tar.gz): verdict, stuck threads, timeline, context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repro.analyze.report import render_timeline_png, stall_since, timeline_series
from repro.capture.request import CaptureRequest
from repro.formats import ANALYSIS_FORMAT, BUNDLE_FORMAT, DETECTION_FORMAT, STORAGE_FORMAT, read_optional
from repro.report.common import dur, events_table, files_table, num, wall_of
from repro.report.model import INFO, STALL, Facts, Figure, Paragraph, Report, Table
from repro.report.sources import RunDir, read_jsonl
from repro.units import format_bytes


def _text(p: Path, limit: int = 4000) -> str:
    try:
        return p.read_text(errors="replace")[:limit]
    except OSError:
        return ""


def build(rd: RunDir) -> Report:
    d = rd.path
    man = read_optional(BUNDLE_FORMAT, d / "manifest.json") or {}
    a = read_optional(ANALYSIS_FORMAT, d / "analysis.json") or {}
    det = read_optional(DETECTION_FORMAT, d / "context" / "detection.json") or man.get("detection") or {}
    verdict = a.get("verdict") or "no analysis"
    where = f" in {a['stuck_frame']}" if a.get("stuck_frame") else ""
    status = STALL if verdict in ("blocked", "busy") else INFO
    headline = f"{a.get('stuck_process') or '?'} {verdict}{where}"
    name = man.get("name") or d.name
    rep = Report("bundle", f"repro bundle: {name}", status, headline, str(rd.given))
    rep.notes.append(f"signature {a.get('signature') or 'none'}; reason {man.get('reason')}; "
                     f"classification {det.get('class') or 'n/a'}; vLLM {man.get('vllm_version')}, "
                     f"captured {man.get('created')}")
    since = wall_of(det.get("since_wall")) or wall_of(man.get("stall_since"))
    if det.get("since_s") is not None:
        rep.notes.append(f"the stall began {dur(det.get('since_s'))} into the run; detected "
                         f"{num(det.get('detection_delay_s'), '{:.0f}')} s later: "
                         + ("; ".join((det.get("evidence") or {}).get("reasons") or []) or "-"))
    sec = rep.section("Timeline")
    png = None
    if (d / "timeline.png").is_file():  # drawn at capture time from the run's timeline.csv: the best data there is
        png = (d / "timeline.png").read_bytes()
        cap = "timeline.png of the bundle, drawn at capture time (the run's timeline, else the /metrics samples)."
    else:
        metrics = read_jsonl(d / "context" / "metrics-samples.jsonl")
        req = CaptureRequest(out_dir=d, detection=det or None, events=read_jsonl(d / "context" / "events.jsonl"))
        png = render_timeline_png(timeline_series(req, metrics), since or stall_since(req), f"{name}: {headline}")
        cap = "from the /metrics samples taken during the capture (context/metrics-samples.jsonl)."
    if png:
        rep.timeline_png = png
        sec.add(Figure("timeline", png, cap))
    else:
        sec.add(Paragraph("no timeline data in this bundle"))
    rows, classes = [], []
    stuck = {(t.get("pid"), t.get("tid")) for t in a.get("stuck_threads") or []}
    for p in a.get("processes") or []:
        for t in p.get("threads") or []:
            if not t.get("main") and (p.get("pid"), t.get("tid")) not in stuck:
                continue
            rows.append([f"{p.get('label')} ({p.get('pid')})", str(t.get("name")), str(t.get("verdict")),
                         str(t.get("stuck_frame")), f"{num(t.get('cpu_seconds'))} / {num(t.get('window_seconds'))}",
                         str(t.get("state") or "-")])
            classes.append("stall" if t.get("verdict") == "blocked" else "")
    sa = rep.section("Stacks")
    sa.add(Table(["process", "thread", "verdict", "stuck frame", "CPU s / window s", "state"], rows,
                 "main threads and stuck threads; every thread is in analysis.json", classes))
    st = man.get("stacks") or {}
    sa.add(Paragraph(f"{st.get('samples', '?')} py-spy samples of {st.get('processes', '?')} processes in "
                     f"{num(st.get('duration'))} s ({st.get('interval', '?')} s apart)"))
    ctx: list[tuple[str, str]] = []
    stats = [ln for ln in _text(d / "context" / "stats-lines.txt", 200_000).splitlines() if ln.strip()]
    if stats:
        ctx.append(("last stats line", stats[-1].strip()[:400]))
    metrics = read_jsonl(d / "context" / "metrics-samples.jsonl")
    if metrics:
        last = metrics[-1]
        ctx.append(("metrics (last sample)", ", ".join(f"{k.split(':', 1)[-1]}={v:g}" for k, v in last.items()
                                                       if k != "t" and isinstance(v, (int, float)))))
    sto = read_optional(STORAGE_FORMAT, d / "context" / "storage.json") or {}
    if sto:
        ctx.append(("storage", f"{sto.get('path')}: {sto.get('files_waiting', '?')} files waiting "
                               f"({format_bytes(sto.get('bytes_waiting'))}), {format_bytes(sto.get('bytes_free'))} "
                               f"free, {(sto.get('mount') or {}).get('fs_type', '?')}"))
    tgt = man.get("target") or {}
    ctx.append(("target", f"{tgt.get('url') or '-'} (root pid {tgt.get('root_pid')}, docker {tgt.get('docker') or '-'})"))
    if man.get("server_command"):
        ctx.append(("server command", " ".join(str(x) for x in man["server_command"])[:600]))
    rep.section("Context").add(Facts(ctx))
    errs: list[Any] = man.get("errors") or []
    if errs:
        rep.section("Collector failures").add(Table(["what", "message"], [[str(e.get("what", "?")), str(e.get("message", ""))]
                                                                          for e in errs if isinstance(e, dict)]))
    events = read_jsonl(d / "context" / "events.jsonl")
    if events:
        rep.section("Events before the capture").add(events_table(events, _event_time))
    rep.section("Files").add(files_table(d))
    return rep


def _event_time(e: dict[str, Any]) -> str:
    """Watch events carry ``time`` (ISO), stress events ``wall`` (ISO) and ``t`` (seconds into the load)."""
    for k in ("time", "wall"):
        if isinstance(e.get(k), str) and len(e[k]) >= 19:
            return e[k][11:19]
    return num(e.get("t"), "{:.1f} s")
