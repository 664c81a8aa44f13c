"""A storage finding in a bundle, worded as its own report (issue 8): not a hang.

What a bundle can hold about the hidden-state store, from the most to the least precise:

* ``context/storage.json`` ``accounting`` -- stress's census (orphaned files and bytes, which
  only the client can tell apart from claimed ones), its rates, the projection, a sample of names;
* ``context/events.jsonl`` -- ``storage-warning`` with ``kind`` ``storage-leak`` / ``storage-exhaustion``
  (stress and watch; stress before the shared vocabulary used the kind as the event name) with their evidence, ``abort-storm`` with abort counts;
* ``context/detection.json`` -- a death whose log names a storage cause (``storage_cause``),
  and the client's completed/aborted counts;
* ``context/scenario.json`` -- the client's timeout, retries and consume policy;
* the plain census of ``storage.json`` (files waiting, free bytes) for what no run measured.

:func:`find` collects that into a :class:`StorageFinding` (None when the bundle shows no
storage problem); :func:`values` words it for ``ISSUE_TEMPLATE_STORAGE.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from repro.units import format_bytes as _mb
from repro.units import format_span as _span

LEAK, EXHAUSTION = "storage-leak", "storage-exhaustion"
HANG_CLASSES = ("engine-stall", "queue-stall", "client-stall", "slow")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


@dataclass
class StorageFinding:
    cause: dict[str, Any] | None  # the storage cause of a death, from the log
    warnings: dict[str, dict[str, Any]]  # storage-leak / storage-exhaustion -> {t, message, evidence}
    census: dict[str, Any]  # orphan_files, orphan_bytes, files, bytes, fs_free_bytes, ... (what is known)
    rates: dict[str, float | None]  # orphan_files_per_s, orphan_bytes_per_s, used_bytes_per_s
    seconds_to_full: float | None
    client: dict[str, Any]  # request_timeout, retries, consume, concurrency, rate, workload; driven_by
    aborts: dict[str, Any] | None  # the worst abort-storm window seen, with the episode count
    hang: bool = False  # the bundle also shows a genuine stall: the storage report goes beside the stall report
    sample: list[dict[str, Any]] = field(default_factory=list)
    moment: str = ""  # which census every figure comes from, and when (one source, one moment)

    @property
    def kind(self) -> str:
        if self.cause:
            return "death"
        return "leak" if LEAK in self.warnings else "exhaustion"


def find(detection: dict[str, Any] | None, storage: dict[str, Any] | None, events: list[dict[str, Any]],
         scenario: dict[str, Any] | None, manifest: dict[str, Any] | None = None) -> StorageFinding | None:
    det = detection or {}
    ev = det.get("evidence") or {}
    cause = ev.get("storage_cause")
    st = storage or {}
    acc = st.get("accounting") or {}
    warnings: dict[str, dict[str, Any]] = {}
    for kind, rec in (acc.get("warnings") or {}).items():
        if kind in (LEAK, EXHAUSTION):
            warnings[kind] = {"t": rec.get("first_s"), "message": rec.get("message"), "evidence": rec.get("evidence") or {},
                              "count": rec.get("count")}
    storms: list[dict[str, Any]] = []
    for e in events:
        kind = e.get("kind") if e.get("event") == "storage-warning" else e.get("event")
        if kind in (LEAK, EXHAUSTION):
            prev = warnings.get(kind)
            if prev is None or not prev.get("evidence"):
                warnings[kind] = {"t": e.get("t"), "message": e.get("message"), "evidence": e.get("evidence") or {}}
            else:  # keep the first time, the latest evidence
                prev.update(message=e.get("message") or prev.get("message"), evidence=e.get("evidence") or prev["evidence"])
        elif e.get("event") == "abort-storm":
            storms.append(e.get("evidence") or {})
    if not cause and not warnings:
        return None
    leak_ev = (warnings.get(LEAK) or {}).get("evidence") or {}
    ex_ev = (warnings.get(EXHAUSTION) or {}).get("evidence") or {}
    census: dict[str, Any] = {"path": acc.get("path") or st.get("path")}
    # Every figure from one census: the client's accounting when there is one (the run's final census, or the
    # one at capture), else the last warning's evidence, else the bare census of the store at capture.
    src: dict[str, Any]
    if acc:
        src, moment = acc, st.get("moment") or "repro's census at capture (context/storage.json)"
        r = acc.get("rates") or {}
        to_full = _num(acc.get("projected_seconds_to_full"))
    elif leak_ev or ex_ev:
        kind = LEAK if leak_ev else EXHAUSTION
        src = {**ex_ev, **leak_ev}
        moment = f"the evidence of the last `{kind}` warning ({(warnings.get(kind) or {}).get('t')} s into the run)"
        r = src
        to_full = _num(ex_ev.get("seconds_to_full"))
    else:
        src = {"files": st.get("files_waiting"), "bytes": st.get("bytes_waiting"), "fs_free_bytes": st.get("bytes_free"),
               "fs_total_bytes": st.get("bytes_total"), "fs_free_inodes": st.get("inodes_free"),
               "fs_total_inodes": st.get("inodes_total")}
        moment, r, to_full = st.get("moment") or "the store at capture (context/storage.json)", {}, None
    for key in ("orphan_files", "orphan_bytes", "oldest_orphan_age_s", "files", "bytes", "claimed_files",
                "pending_files", "fs_free_bytes", "fs_total_bytes", "fs_free_inodes", "fs_total_inodes", "claims_made"):
        if src.get(key) is not None:
            census[key] = src[key]
    rates = {"orphan_files_per_s": _num(r.get("orphan_files_per_s")),
             "orphan_bytes_per_s": _num(r.get("orphan_bytes_per_s")),
             "used_bytes_per_s": _num(r.get("used_bytes_per_s"))}
    load = (scenario or {}).get("load") or {}
    watchdog = (manifest or {}).get("reason") == "watchdog" or any(e.get("event") == "watch-start" for e in events)
    client: dict[str, Any] = {"driven_by": "other clients (repro watch sends no load)" if watchdog else "repro stress"}
    if not watchdog:
        for key in ("request_timeout", "retries", "consume", "concurrency", "rate", "workload"):
            if key in load:
                client[key] = load[key]
    aborts: dict[str, Any] | None = None
    if storms:
        worst = max(storms, key=lambda s: s.get("abort_share") or 0.0)
        aborts = {**worst, "episodes": len(storms)}
    elif ev.get("client_aborted") is not None:
        aborts = {"aborted": ev.get("client_aborted"), "completed": ev.get("client_completed"), "episodes": 0}
    return StorageFinding(cause, warnings, census, rates, to_full, client, aborts,
                          hang=det.get("class") in HANG_CLASSES and not cause,
                          sample=list(acc.get("orphan_sample") or [])[:10], moment=moment)


def title(f: StorageFinding) -> str:
    c = f.census
    if f.cause:
        where = " in the hidden-state write" if f.cause.get("in_hidden_state_write") == "yes" else ""
        return f"EngineCore dies when the hidden-state store fails ({f.cause.get('kind')}{where})"
    if f.kind == "leak":
        n = c.get("orphan_files")
        fps = f.rates.get("orphan_files_per_s")
        pace = f" at {fps * 60:.0f} files/min" if fps else ""
        return (f"hidden-state files of aborted requests are never deleted: {n if n is not None else 'orphaned'} "
                f"files no response named pile up{pace}")
    return (f"hidden-state store fills up under extraction load (full in about {_span(f.seconds_to_full)} "
            "at the measured pace)")


def _summary(f: StorageFinding) -> str:
    parts = []
    if f.cause:
        parts.append(f"The engine died of a storage failure (`{f.cause.get('kind')}`) in the hidden-state write: "
                     f"`{str(f.cause.get('line', ''))[:300]}`.")
    if LEAK in f.warnings or f.census.get("orphan_files"):
        parts.append("vLLM writes a hidden-state file for every request it prefilled, including requests the client "
                     "aborted afterwards (a client timeout aborts the request on the server). No response ever names "
                     "those files, so no client can consume them, and nothing deletes them: the store grows until "
                     "it is full, and a full store kills EngineCore (`No space left on device` in the write).")
    elif not f.cause:
        parts.append("The hidden-state store fills up: vLLM never deletes the files it writes, and at the measured "
                     "pace the filesystem runs out of space, which kills EngineCore (ENOSPC in the write).")
    parts.append("This is a storage report, not a hang: the engine kept stepping until the store failed."
                 if not f.hang else
                 "This is a storage report beside the stall report of the same bundle: the two are separate problems.")
    return " ".join(parts)


def _client(f: StorageFinding) -> str:
    c = f.client
    lines = [f"- Load from: {c['driven_by']}"]
    if "request_timeout" in c:
        lines.append(f"- Client timeout per request: {c['request_timeout']:g} s, retries: {c.get('retries')}, "
                     f"concurrency {c.get('concurrency')}" + (f", Poisson rate {c['rate']:g}/s" if c.get("rate") else "")
                     + f", workload {c.get('workload')}")
        lines.append(f"- Consume policy of the files the client was given: `{c.get('consume')}`")
    a = f.aborts
    if a:
        if a.get("episodes"):
            lines.append(f"- Abort storm ({a['episodes']} episode(s)): {a.get('aborted')} of "
                         f"{(a.get('aborted') or 0) + (a.get('completed') or 0)} requests ended in client timeouts within "
                         f"{a.get('window_s')} s (abort share {a.get('abort_share')}, {a.get('aborts_per_s')} aborts/s, "
                         f"goodput {a.get('goodput_per_s')} requests/s)")
        else:
            lines.append(f"- Requests aborted by the client at capture: {a.get('aborted')}, completed: {a.get('completed')}")
    return "\n".join(lines)


def _rate(f: StorageFinding) -> str:
    r = f.rates
    lines = []
    if r.get("orphan_files_per_s") is not None:
        lines.append(f"- Orphaned files: {r['orphan_files_per_s']:.2f} files/s ({r['orphan_files_per_s'] * 60:.0f}/min), "
                     f"{_mb((r.get('orphan_bytes_per_s') or 0.0))}/s")
    if r.get("used_bytes_per_s") is not None:
        lines.append(f"- The filesystem fills at {_mb(r['used_bytes_per_s'])}/s")
    if f.seconds_to_full is not None:
        lines.append(f"- Projected full in about {_span(f.seconds_to_full)} at that pace")
    ex = (f.warnings.get(EXHAUSTION) or {})
    if ex.get("t") is not None:
        lines.append(f"- repro warned `storage-exhaustion` at {ex['t']} s of the run, before anything broke")
    return "\n".join(lines) or "- No growth rate was measured (too few censuses of the store before the failure)."


def _census(f: StorageFinding) -> str:
    c = f.census
    rows = [("store", f"`{c.get('path')}`")]
    for key, label, fmt in (("files", "hidden-state files present", str), ("bytes", "their bytes", _mb),
                            ("claimed_files", "claimed by a response", str),
                            ("orphan_files", "orphaned (never named in a response)" if f.client["driven_by"] == "repro stress"
                             else "unclaimed past the grace period (watch sees no responses)", str),
                            ("orphan_bytes", "orphaned bytes", _mb),
                            ("oldest_orphan_age_s", "oldest orphan", _span),
                            ("fs_free_bytes", "filesystem free", _mb), ("fs_total_bytes", "filesystem size", _mb),
                            ("fs_free_inodes", "free inodes", str), ("claims_made", "responses that named a file", str)):
        if c.get(key) is not None:
            rows.append((label, fmt(c[key])))  # type: ignore[operator]
    table = "| | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    if f.sample:
        table += "\n\nA sample of orphaned files (name, bytes, age): " + ", ".join(
            f"`{s.get('name')}` ({s.get('bytes')}, {_span(_num(s.get('age_s')))})" for s in f.sample[:5])
    return table


def _warnings(f: StorageFinding) -> str:
    if not f.warnings:
        return "- none before the failure"
    return "\n".join(f"- `{k}` at {w.get('t')} s: {w.get('message')}" for k, w in sorted(f.warnings.items()))


def values(f: StorageFinding) -> dict[str, str]:
    return {"storage_title": title(f), "storage_summary": _summary(f), "storage_client": _client(f),
            "storage_rate": _rate(f), "storage_census": _census(f), "storage_warnings": _warnings(f),
            "storage_kind": f.kind, "storage_moment": f.moment or "the bundle's census"}
