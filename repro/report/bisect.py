"""The report of a `repro bisect` run directory: the decision path read from journal.jsonl (and minimal.json)."""

from __future__ import annotations

import time
from typing import Any

from repro.bisect.journal import Journal, read_steps
from repro.formats import JOURNAL_FORMAT, MINIMAL_FORMAT, read_optional, version_of
from repro.report.common import dur, files_table, hours, num
from repro.report.model import CLEAN, INFO, STALL, WARNING, Facts, Figure, Report, Table
from repro.report.plots import bisect_png
from repro.report.sources import RunDir


def _outcome(step: Any) -> str:
    if not step.trials or any(not t.ended for t in step.trials):
        return "open"
    if step.hung:
        return "hang"
    return "skipped" if step.skipped else "clean"


def build(rd: RunDir) -> Report:
    d = rd.path
    journal = Journal(d / "journal.jsonl")
    records = list(journal.records())
    header = records[0] if records and records[0].get("type") == "start" else {}
    steps = [s for s in read_steps(journal)]
    done = next((r for r in reversed(records) if r.get("type") == "done"), None)
    if header:
        version_of(JOURNAL_FORMAT, header, str(journal.path))
    minimal = read_optional(MINIMAL_FORMAT, d / "minimal.json")
    hangs = sum(1 for s in steps if s.hung and not s.undone)
    trial_s = sum(s.trial_time for s in steps)
    exposure = sum(s.exposure for s in steps if not s.undone)
    mode = header.get("mode", "?")
    if done is not None and done.get("status") == "minimal":
        rate = (minimal or {}).get("rate") or {}
        ci = rate.get("ci95_per_hour") or [None, None]
        status, headline = STALL, (f"minimal configuration: {(minimal or {}).get('describe') or done.get('text')}"
                                   + (f"; rate {num(rate.get('per_hour'), '{:.3g}')}/h [95% CI "
                                      f"{num(ci[0], '{:.3g}')}-{num(ci[1], '{:.3g}')}/h]" if rate else ""))
    elif done is not None and done.get("status") == "no-baseline":
        status, headline = CLEAN, f"the baseline did not hang: {done.get('text')} ({hours(exposure)} of clean exposure)"
    elif done is not None:
        status, headline = WARNING, f"search ended: {done.get('status')} ({done.get('text')})"
    else:
        status, headline = INFO, f"search in progress or stopped: {len(steps)} step(s) so far, {hangs} hang(s)"
    rep = Report("bisect", f"repro bisect: {d.name}", status, headline, str(rd.given))
    rep.notes.append(f"{len(steps)} steps, {hangs} hang(s), {hours(exposure)} of exposure, {hours(trial_s)} of trials "
                     f"({mode}); every decision below is a line of journal.jsonl")
    path = [{"step": s.step, "concurrency": s.config.get("concurrency"), "changes": s.config.get("changes") or [],
             "exposure_s": s.exposure, "trial_s": s.trial_time or s.exposure, "outcome": _outcome(s)}
            for s in steps if not s.undone]
    sec = rep.section("Decision path")
    png = bisect_png(path, f"{d.name}: {headline[:90]}")
    if png:
        rep.timeline_png = png
        sec.add(Figure("decision path", png, "Each step's configuration (concurrency, and the number of changes from "
                                             "a plain server after the colon) against the trial-hours spent before "
                                             "it: red x hung, green o clean, gray skipped; bars: exposure per step."))
    classes = []
    rows = []
    for s in steps:
        out = _outcome(s)
        t_desc = ", ".join(("HANG" if t.hung else "skipped" if t.skipped else "clean" if t.ended else "open")
                           + f" {dur(t.exposure or t.last_heartbeat)}" + (" (recovered)" if t.recovered else "")
                           for t in s.trials)
        rows.append([str(s.step), _describe(records, s.step) or str(s.config), dur(s.cap),
                     ("undone: " if s.undone else "") + out, t_desc, dur(s.exposure)])
        classes.append("" if s.undone else {"hang": "hang", "clean": "clean"}.get(out, ""))
    sec.add(Table(["step", "configuration", "clean cap", "outcome", "trials", "exposure"], rows,
                  "clean cap: the clean exposure after which the step counts as 'does not hang'", classes))
    decisions = [r for r in records if r.get("type") in ("decision", "undo", "resume", "done")]
    rep.section("Decisions").add(Table(
        ["time (UTC)", "phase", "decision"],
        [[time.strftime("%H:%M:%S", time.gmtime(r.get("t", 0))), str(r.get("phase") or r.get("type")),
          str(r.get("text") or r.get("status") or "")] for r in decisions]))
    if minimal is not None:
        rate = minimal.get("rate") or {}
        base = (minimal.get("baseline") or {})
        rep.section("Result").add(Facts([
            ("status", str(minimal.get("status"))),
            ("minimal configuration", str(minimal.get("describe"))),
            ("its rate", f"{rate.get('hangs')} hang(s) in {dur(rate.get('exposure_s'))}: {num(rate.get('per_hour'))}/h, "
                         f"95% CI {rate.get('ci95_per_hour')}, upper {num(rate.get('upper95_per_hour'))}/h"),
            ("baseline", f"{(base.get('rate') or {}).get('hangs')} hang(s) in {dur((base.get('rate') or {}).get('exposure_s'))} "
                         f"({num((base.get('rate') or {}).get('per_hour'))}/h)"),
            ("reproducer", "repro_min.sh + repro_min.py in this directory; ISSUE_bisect.md for the issue"),
        ]))
    space = header.get("space") or {}
    rep.section("Search").add(Facts([
        ("space", f"concurrency {space.get('concurrency')}, changes {', '.join(space.get('changes') or []) or 'none'}"),
        ("settings", ", ".join(f"{k} {v}" for k, v in sorted((header.get("settings") or {}).items()))),
        ("mode", str(mode)),
    ]))
    rep.section("Files").add(files_table(d))
    return rep


def _describe(records: list[dict[str, Any]], step: int) -> str | None:
    for r in records:
        if r.get("type") == "step" and r.get("step") == step:
            return r.get("describe")
    return None
