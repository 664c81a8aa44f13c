"""The report of a `repro stress` run directory (scenario.json, summary.json, timeline.csv, requests.jsonl,
events.jsonl, detection.json, bundle-NNN/)."""

from __future__ import annotations

from typing import Any

from repro.analyze.report import render_timeline_png, series_from_timeline_csv
from repro.formats import (DETECTION_FORMAT, EVENTS_FORMAT, SCENARIO_FORMAT, STRESS_SUMMARY_FORMAT, check_lines,
                           read_optional)
from repro.report.common import (dur, events_table, exposure_note, files_table, hours, num, state_bands,
                                 timeline_rows, wall_of)
from repro.report.model import CLEAN, INFO, STALL, WARNING, Facts, Figure, Paragraph, Report, Table
from repro.report.plots import requests_png
from repro.report.requests import bin_requests
from repro.report.sources import RunDir, read_jsonl
from repro.units import format_bytes


def _headline(s: dict[str, Any] | None, c: Any, exposure: float) -> tuple[str, str]:
    if s is None:
        return INFO, "no summary.json: the run did not finish (this report shows what it wrote)"
    outcome = s.get("outcome")
    files = s.get("files") or {}
    bad = int(files.get("bad") or 0)
    at = f"at concurrency {c}"
    if outcome == "clean":
        if bad:
            return WARNING, f"no stall in {hours(exposure)} {at}, but {bad} hidden-state file(s) failed verification"
        return CLEAN, f"clean: {hours(exposure)} {at}"
    if outcome == "stall":
        st = s.get("stall") or {}
        return STALL, f"stall: {st.get('class') or '?'} after {dur(exposure)} of load {at}"
    if outcome == "interrupted":
        return WARNING, f"interrupted after {dur(s.get('load_seconds'))}: no stall in {hours(exposure)} {at} (a partial run)"
    return WARNING, f"{outcome or 'unknown outcome'}: {s.get('error') or 'see summary.json'}"


def build(rd: RunDir) -> Report:
    d = rd.path
    scn = read_optional(SCENARIO_FORMAT, d / "scenario.json") or {}
    s = read_optional(STRESS_SUMMARY_FORMAT, d / "summary.json")
    events = read_jsonl(d / "events.jsonl")
    if events:
        check_lines(EVENTS_FORMAT, events[0], str(d / "events.jsonl"))
    load = scn.get("load") or {}
    c = (s or {}).get("fidelity", {}).get("concurrency") or load.get("concurrency") or "?"
    rows = timeline_rows(d / "timeline.csv")
    last_t = float(rows[-1]["t"]) if rows and rows[-1].get("t") else 0.0
    load_s = float((s or {}).get("load_seconds") or last_t)
    exposure = float((s or {}).get("exposure_seconds") if s and s.get("exposure_seconds") is not None else load_s)
    status, headline = _headline(s, c, exposure)
    stall = (s or {}).get("stall") or read_optional(DETECTION_FORMAT, d / "detection.json")
    stall_wall = wall_of((stall or {}).get("since_wall"))
    stall_rel = (stall or {}).get("since_s")
    where = f"concurrency {c}" + (f" ({load.get('workload')}, prompts {_plen(load)})" if load else "")
    rep = Report("stress", f"repro stress: {d.name}", status, headline, str(rd.given))
    if status in (CLEAN, WARNING) and s is not None and s.get("outcome") in ("clean", "interrupted"):
        rep.notes.append(exposure_note(exposure, where))
    if status == STALL and stall:
        rep.notes.append(f"stalled {dur(stall_rel)} into the load, detected {num(stall.get('detection_delay_s'), '{:.0f}')} s "
                         f"later: " + ("; ".join((stall.get("evidence") or {}).get("reasons") or []) or "see summary.json"))
        rep.notes.append(f"exposure before the stall: {hours(exposure)} at {where}")
    if s is not None:
        r = s.get("requests") or {}
        rep.notes.append(f"{r.get('ok', 0)} ok of {r.get('total', 0)} requests in {dur(load_s)}"
                         f"; fidelity mean {num((s.get('fidelity') or {}).get('mean'))}")

    bands_wall = state_bands(rows, "wall")
    bands_rel = state_bands(rows, "t")
    sec = rep.section("Timeline")
    series = series_from_timeline_csv(d / "timeline.csv") if rows else None
    if series and series.get("t"):
        png = render_timeline_png(series, stall_wall, f"{d.name}: {headline}",
                                  concurrency=float(c) if isinstance(c, (int, float)) else None, bands=bands_wall)
        if png:
            rep.timeline_png = png
            sec.add(Figure("timeline", png, "Server running/waiting against the configured concurrency (dashed: the "
                                            "fidelity of the load), token rates, client completions and storage "
                                            "from timeline.csv; yellow: detector suspect, red: stalled; red dashed "
                                            "line: where the stall began."))
    else:
        sec.add(Paragraph("no timeline.csv rows: the load never started"))
    rs = bin_requests(d / "requests.jsonl", load_s, stall_rel if isinstance(stall_rel, (int, float)) else None)
    png = requests_png(rs, f"{d.name}: requests", stall_rel if isinstance(stall_rel, (int, float)) else None, bands_rel)
    if png:
        sec.add(Figure("requests", png, f"From requests.jsonl ({rs.total} requests): completions and failures per "
                                        f"second, latency percentiles of completed requests, errors, and hidden-state "
                                        f"file checks, in buckets of {rs.width:g} s."))
    if s is not None:
        _summary_sections(rep, s, scn, rs)
    rep.section("Detector and events").add(events_table(events, lambda e: num(e.get("t"), "{:.1f} s")))
    bundles = sorted(p.name for p in d.glob("bundle-*") if p.is_dir() or p.name.endswith(".tar.gz"))
    if bundles:
        sb = rep.section("Evidence")
        cap = (s or {}).get("capture") or {}
        sb.add(Paragraph(f"captured: {', '.join(bundles)} (capture {cap.get('status', '?')}"
                         f"{', ' + str(cap.get('seconds')) + ' s' if cap.get('seconds') is not None else ''}); "
                         f"`repro report {d / bundles[-1]}` reports the bundle, `repro issue` renders ISSUE.md from it"))
    rep.section("Files").add(files_table(d))
    return rep


def _plen(load: dict[str, Any]) -> str:
    pl = load.get("prompt_len")
    if isinstance(pl, list) and len(pl) == 2:
        return f"{pl[0]}-{pl[1]} tokens" if pl[0] != pl[1] else f"{pl[0]} tokens"
    return "from " + str(load.get("prompts_file")) if load.get("prompts_file") else "?"


def _summary_sections(rep: Report, s: dict[str, Any], scn: dict[str, Any], rs: Any) -> None:
    load = scn.get("load") or {}
    tgt = s.get("target") or {}
    r = s.get("requests") or {}
    thr = s.get("throughput") or {}
    lat = s.get("latency_s") or {}
    rep.section("Run").add(Facts([
        ("target", f"{tgt.get('url')} (model {tgt.get('model')}, {'launched by repro' if tgt.get('launched') else 'attached'})"),
        ("workload", f"{load.get('workload')}, prompts {_plen(load)}, max_tokens {load.get('max_tokens')}"),
        ("load", f"concurrency {load.get('concurrency')}" + (f", Poisson {load.get('rate')}/s" if load.get("rate") else
                                                           ", closed loop")
                 + f", timeout {num(load.get('request_timeout'))} s, retries {load.get('retries')}"),
        ("duration", f"{dur(load.get('duration'))} asked, {dur(s.get('load_seconds'))} ran"
                     if load.get("duration") else f"{dur(s.get('load_seconds'))} ran"),
        ("started / ended", f"{s.get('started_at')} / {s.get('ended_at')}"),
        ("outcome", f"{s.get('outcome')} (exit code {s.get('exit_code')}, stop reason {s.get('stop_reason')})"),
    ]))
    sec = rep.section("Requests")
    sec.add(Facts([
        ("requests", f"{r.get('total', 0)} total: {r.get('ok', 0)} ok, {r.get('failed', 0)} failed, "
                     f"{r.get('timeouts', 0)} timed out, {r.get('cancelled', 0)} cancelled; {r.get('retries', 0)} retries, "
                     f"{r.get('attempt_timeouts', 0)} attempt timeouts (each aborts the request on the server)"),
        ("throughput", f"{num(thr.get('requests_per_s'))} requests/s, {num(thr.get('prompt_tokens_per_s'))} prompt tokens/s"),
        ("latency (ok)", f"p50 {num(lat.get('p50'))} s, p90 {num(lat.get('p90'))} s, p99 {num(lat.get('p99'))} s, "
                         f"max {num(lat.get('max'))} s"),
    ]))
    errs = r.get("errors") or {}
    if errs:
        sec.add(Table(["error", "requests"], [[k, str(v)] for k, v in sorted(errs.items(), key=lambda kv: -kv[1])],
                      "errors after all retries, by kind"))
    fid = s.get("fidelity") or {}
    rep.section("Load fidelity").add(Facts([
        ("server running + waiting / concurrency", f"mean {num(fid.get('mean'))}, p5 {num(fid.get('p5'))} "
                                                   f"({fid.get('samples', 0)} samples, {fid.get('mode')})"),
        ("client slots filled", f"mean {num(fid.get('client_fill_mean'))} ({num(fid.get('client_in_flight_mean'))} "
                                f"of {fid.get('concurrency')} in flight)"),
        ("definition", str(fid.get("definition") or "")),
    ]))
    f = s.get("files") or {}
    if f.get("verified") or f.get("bad") or f.get("not_written_engine_stalled"):
        rows = [("verified and consumed", f"{f.get('verified', 0)} ({format_bytes(f.get('bytes'))}; "
                                          + ", ".join(f"{k} {v}" for k, v in (f.get("consumed") or {}).items()) + ")"),
                ("bad", f"{f.get('bad', 0)}" + (": " + ", ".join(f"{k} {v}" for k, v in (f.get("errors") or {}).items())
                                                if f.get("errors") else ""))]
        if f.get("not_written_engine_stalled"):
            rows.append(("not written: engine stalled",
                         f"{f['not_written_engine_stalled']} (the response came back, then the stalled engine never "
                         f"wrote the file: evidence of the stall, not a bad file; "
                         + ", ".join(f"{k} {v}" for k, v in (f.get("not_written_errors") or {}).items()) + ")"))
        rep.section("Hidden-state files").add(Facts(rows))
    sto = s.get("storage")
    if sto:
        rows = [("store", f"{sto.get('path')}: {sto.get('files', '?')} files, {format_bytes(sto.get('bytes'))}"),
                ("orphans", f"{sto.get('orphan_files', '?')} files ({format_bytes(sto.get('orphan_bytes'))}) no response "
                            f"claimed; oldest {num(sto.get('oldest_orphan_age_s'), '{:.0f}')} s"),
                ("claimed, still present", str(sto.get("claimed_files", "?"))),
                ("filesystem free", f"{format_bytes(sto.get('fs_free_bytes'))} of {format_bytes(sto.get('fs_total_bytes'))}"),
                ("scans", f"{sto.get('scans_total', sto.get('scans'))} ({num(sto.get('scan_seconds_total'), '{:.2f}')} s)")]
        if sto.get("projected_seconds_to_full") is not None:
            rows.append(("projected full in", dur(sto["projected_seconds_to_full"])))
        for kind, w in (sto.get("warnings") or {}).items():
            rows.append((f"warning {kind}", f"{w.get('count')}x from {num(w.get('first_s'))} s: {w.get('message')}"))
        rep.section("Storage").add(Facts(rows))
    storm = s.get("abort_storm")
    if storm:
        rep.section("Abort storm").add(Facts([
            ("episodes", f"{storm.get('episodes')} from {num(storm.get('first_s'))} s, {num(storm.get('seconds'))} s in all"),
            ("peak abort share", num(storm.get("peak_abort_share"))),
            ("lowest goodput", f"{num(storm.get('min_goodput_per_s'))} requests/s"),
            ("verdict", str(storm.get("verdict") or ""))]))
    st = s.get("stall")
    if st:
        ev = st.get("evidence") or {}
        rep.section("Stall").add(Facts([
            ("class", str(st.get("class"))),
            ("began", f"{num(st.get('since_s'))} s into the load ({st.get('since_wall')})"),
            ("detected", f"{num(st.get('detected_s'))} s ({st.get('detected_wall')}), "
                         f"{num(st.get('detection_delay_s'))} s later (window {num(st.get('window_s'))} s)"),
            ("reasons", "; ".join(ev.get("reasons") or []) or "-"),
            ("server view", f"running {num(ev.get('running'))}, waiting {num(ev.get('waiting'))} ({ev.get('server_view')})"),
            ("storage cause", str((s.get("storage_cause") or {}).get("kind") or "-")),
        ]))
    if s.get("log_warnings"):
        rep.section("Server log warnings").add(Table(["warning"], [[w] for w in s["log_warnings"]]))
    if rs.skipped_lines:
        rep.notes.append(f"{rs.skipped_lines} line(s) of requests.jsonl could not be read (a torn last line?)")
