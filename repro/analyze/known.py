"""Match a bundle against the known-hang catalogue, judge the vLLM version, and word the result.

How a match is decided (the contract the tests check):

* Every rule part (``[[entry.when]]``) is checked against the bundle's :class:`~repro.analyze.evidence.Evidence`
  and *holds*, *fails*, or cannot be checked (the bundle lacks the data: no ``--native`` dumps, no metrics).
* An entry **matches** when every ``required`` part holds, no ``unless`` part holds, and its score reaches
  the entry's ``min_score`` (0 unless set: for entries whose evidence comes in alternative shapes).
* An entry that is not one of repro's own injected faults never matches a bundle in which repro's fault
  plugin injected a fault (active at capture, or a ``repro_injected_*`` frame in a stack): such a bundle is
  a test of the kit, explained by the injection, never an upstream issue.
* The **score** is the weight of the parts that hold over the weight of all parts (``unless`` parts aside),
  0-1: it ranks matches; it does not decide them.
* The **version verdict** compares the bundle's vLLM version with the entry's ``affected`` specifier and
  ``fixed_in``: affected, fixed (the fix is in that version: a regression, or another bug of the same shape),
  not affected (outside the range), or unknown.

A match is a pointer to read, not a diagnosis: the stacks in the bundle stay the evidence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from repro.analyze import catalogue as cat
from repro.analyze.evidence import Evidence, ThreadFacts, gather
from repro.storage.finding import EXHAUSTION, LEAK

_OP = re.compile(r"^(==|!=|>=|<=|>|<)(-?\d+(?:\.\d+)?)$")


@dataclass
class PartResult:
    rule: str
    kind: str
    required: bool
    unless: bool
    weight: float
    held: bool | None  # None: the bundle lacks what the part needs
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "kind": self.kind, "required": self.required, "unless": self.unless,
                "weight": self.weight, "held": self.held, "detail": self.detail}


@dataclass
class VersionVerdict:
    version: str | None
    verdict: str  # affected | fixed | not affected | unknown | injected
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.version, "verdict": self.verdict, "text": self.text}


@dataclass
class Match:
    entry: cat.Entry
    matched: bool
    score: float
    parts: list[PartResult]
    version: VersionVerdict
    excluded: str | None = None  # why a fully matching entry was still not a match
    why_not: str | None = None  # the first reason it does not match

    def to_dict(self) -> dict[str, Any]:
        e = self.entry
        return {"id": e.id, "title": e.title, "origin": e.origin, "status": e.status, "score": self.score,
                "matched": [p.rule + (f" ({p.detail})" if p.detail else "") for p in self.parts if p.held and not p.unless],
                "unmatched": [p.rule + (f" ({p.detail})" if p.detail else "") for p in self.parts
                              if not p.held and not p.unless],
                "upstream": [u.to_dict() for u in e.upstream], "affected": e.affected, "fixed_in": e.fixed_in,
                "version": self.version.to_dict(), "workaround": e.workaround, "evidence_date":
                e.evidence_date.isoformat()}


# -- rule parts ---------------------------------------------------------------------------------------------
def _candidates(ev: Evidence, params: dict[str, Any]) -> list[ThreadFacts]:
    procs = params.get("process", "any")
    procs = procs if isinstance(procs, list) else [procs]
    thread = params.get("thread", "main")
    out = []
    for t in ev.threads:
        if "any" not in procs and t.role not in procs:
            continue
        if thread == "main" and not t.main:
            continue
        if thread not in ("main", "any") and not re.search(thread, t.name):
            continue
        out.append(t)
    return out


def _in_order(patterns: list[str], frames: list[str]) -> list[str] | None:
    """The frames matching each pattern, each found at or outside the previous one; None when one is missing."""
    got, i = [], 0
    for pat in patterns:
        rx = re.compile(pat)
        while i < len(frames) and not rx.search(frames[i]):
            i += 1
        if i == len(frames):
            return None
        got.append(frames[i])
    return got


def _stack(ev: Evidence, p: dict[str, Any], native: bool) -> tuple[bool | None, str]:
    if not ev.threads:
        return None, "no stacks in the bundle"
    if native and not ev.has_native:
        return None, "no --native dumps in the bundle"
    cands = _candidates(ev, p)
    if not cands:
        return False, f"no {p.get('thread', 'main')} thread of {p.get('process', 'any')} in the bundle"
    for t in cands:
        got = _in_order(p["frames"], t.native if native else t.frames)
        if got is not None:
            return True, f"{t.process}/{t.name}: " + " < ".join(got)
    return False, "not in " + ", ".join(sorted({f"{t.process}/{t.name}" for t in cands}))


def _log(ev: Evidence, p: dict[str, Any]) -> tuple[bool | None, str]:
    if not ev.log_lines:
        return None, "no log tail in the bundle"
    found = []
    for pat in p["patterns"]:
        rx = re.compile(pat)
        line = next((ln for ln in ev.log_lines if rx.search(ln)), None)
        if line is not None:
            found.append(line.strip()[:160])
    ok = bool(found) if p.get("match", "any") == "any" else len(found) == len(p["patterns"])
    return ok, (found[0] if found else "none of them in the log tail")


def compare(value: float, spec: str) -> bool:
    op, num = _OP.match(spec).groups()  # type: ignore[union-attr]
    n = float(num)
    return {"==": value == n, "!=": value != n, ">=": value >= n, "<=": value <= n, ">": value > n,
            "<": value < n}[op]


def _metrics(ev: Evidence, p: dict[str, Any]) -> tuple[bool | None, str]:
    if ev.metrics is None:
        return None, "no metrics in the bundle (no --url, no stats line)"
    shown, ok = [], True
    for k, spec in p.items():
        v = ev.metrics.get(k)
        if v is None:
            return None, f"{k} not measured ({ev.metrics_source})"
        shown.append(f"{k}={v:g}")
        ok = ok and compare(v, spec)
    return ok, ", ".join(shown) + f" ({ev.metrics_source})"


def _storage(ev: Evidence, p: dict[str, Any]) -> tuple[bool | None, str]:
    f = ev.storage
    if f is None:
        return False, "no storage finding"
    kinds = ({"death"} if f.cause else set()) | ({"leak"} if LEAK in f.warnings or f.census.get("orphan_files")
                                                else set()) | ({"exhaustion"} if EXHAUSTION in f.warnings else set())
    ok = True
    if "finding" in p:
        ok = ok and bool(kinds & set(p["finding"]))
    if "cause" in p:
        c = f.cause or {}
        ok = ok and bool(re.search(p["cause"], f"{c.get('kind', '')} {c.get('line', '')}"))
    if "orphans" in p:
        ok = ok and bool(f.census.get("orphan_files")) == p["orphans"]
    detail = ", ".join(sorted(kinds)) or "none"
    if f.cause:
        detail += f"; cause {f.cause.get('kind')}"
    if f.census.get("orphan_files"):
        detail += f"; {f.census['orphan_files']} orphaned files"
    return ok, detail


def _injected(ev: Evidence, p: dict[str, Any]) -> tuple[bool | None, str]:
    inj = ev.injected
    kinds = [k for k in sorted(inj.active) if re.search(p["fault"], k)]
    if kinds:
        return True, f"{', '.join(kinds)} ({'; '.join(inj.sources)})"
    if not inj.active and "frame" in p:
        frames = [f for f in sorted(inj.frames) if re.search(p["frame"], f)]
        if frames:
            return True, f"frame {frames[0]} (no record of which fault fired)"
    return False, (f"active: {', '.join(sorted(inj.active))}" if inj.active else "no injected fault")


def _server(ev: Evidence, p: dict[str, Any]) -> tuple[bool | None, str]:
    if not ev.server_command and "args" in p:
        return None, "server command not recorded"
    shown, ok = [], True
    if "args" in p:
        m = re.search(p["args"], ev.server_command)
        ok = ok and m is not None
        shown.append(f"args: {m.group(0)[:80]}" if m else "args: no")
    for k, rx in (p.get("env") or {}).items():
        v = ev.server_env.get(k)
        hit = v is not None and re.search(rx, v) is not None
        ok = ok and hit
        shown.append(f"{k}={v}" if v is not None else f"{k} unset")
    return ok, "; ".join(shown)


def _gpu(ev: Evidence, p: dict[str, Any]) -> tuple[bool | None, str]:
    ok, shown = True, []
    if "name" in p:
        if not ev.gpu_names:
            return None, "no GPU information (no context/gpu.json, no GPU line in collect-env)"
        hit = next((n for n in ev.gpu_names if re.search(p["name"], n)), None)
        ok = ok and hit is not None
        shown.append(hit or ", ".join(dict.fromkeys(ev.gpu_names)))
    if "state" in p:
        if ev.gpu is None:
            return None, "no context/gpu.json"
        ok = ok and ev.gpu.state == p["state"]
        shown.append(f"utilization {ev.gpu.state}")
    return ok, "; ".join(shown)


def _verdict(ev: Evidence, p: dict[str, Any]) -> tuple[bool | None, str]:
    return ev.verdict in p["is"], f"bundle verdict {ev.verdict}"


_CHECKS = {"stack": lambda ev, p: _stack(ev, p, False), "native": lambda ev, p: _stack(ev, p, True), "log": _log,
           "metrics": _metrics, "storage": _storage, "injected": _injected, "server": _server, "gpu": _gpu,
           "verdict": _verdict}


# -- versions -----------------------------------------------------------------------------------------------
def version_verdict(entry: cat.Entry, version: str | None) -> VersionVerdict:
    if entry.origin == "injected":
        return VersionVerdict(version, "injected", "injected by repro: not a vLLM bug")
    if not version:
        return VersionVerdict(None, "unknown", "your vLLM version is not recorded in the bundle")
    try:
        v = Version(version)
    except InvalidVersion:
        return VersionVerdict(version, "unknown", f"your version {version}: not a version repro can compare")
    if entry.fixed_in and v >= Version(entry.fixed_in):
        return VersionVerdict(version, "fixed", f"your version {version}: has the fix (in {entry.fixed_in} and "
                                                "later), so this is a regression or another bug of the same shape")
    if entry.affected:
        if SpecifierSet(entry.affected).contains(v, prereleases=True):
            return VersionVerdict(version, "affected", f"your version {version}: affected")
        return VersionVerdict(version, "not affected", f"your version {version}: outside the affected range")
    return VersionVerdict(version, "unknown", f"your version {version}: affected range not recorded")


# -- matching -----------------------------------------------------------------------------------------------
def check(entry: cat.Entry, ev: Evidence) -> Match:
    """How `entry` fares against the bundle's evidence (whether it matches or not)."""
    parts = []
    for c in entry.conditions:
        held, detail = _CHECKS[c.kind](ev, c.params)
        parts.append(PartResult(c.describe(), c.kind, c.required, c.unless, c.weight, held, detail))
    total = sum(p.weight for p in parts if not p.unless)
    score = round(sum(p.weight for p in parts if p.held and not p.unless) / total, 2) if total else 0.0
    missing = next((p for p in parts if p.required and not p.held), None)
    vetoed = next((p for p in parts if p.unless and p.held), None)
    excluded = None
    if entry.origin != "injected" and ev.injected.any:
        excluded = f"repro injected a fault into this server ({ev.injected.describe()}): that explains the bundle"
    if missing:
        why = (f"required part {'could not be checked' if missing.held is None else 'fails'}: {missing.rule} "
               f"({missing.detail})")
    elif vetoed:
        why = f"unless part holds: {vetoed.rule} ({vetoed.detail})"
    elif score < entry.min_score:
        why = f"score {score:.2f} below the entry's min_score {entry.min_score:.2f}"
    else:
        why = excluded
    return Match(entry, why is None, score, parts, version_verdict(entry, ev.vllm_version), excluded, why)


def check_all(catalogue: cat.Catalogue, ev: Evidence) -> list[Match]:
    """Every entry's result, matches first (best score first), then the rest by score."""
    res = [check(e, ev) for e in catalogue.entries]
    return sorted(res, key=lambda m: (not m.matched, -m.score, m.entry.id))


def catalogue_info(catalogue: cat.Catalogue) -> dict[str, Any]:
    return {"entries": len(catalogue.entries), "date": catalogue.date, "files": [p for p, _ in catalogue.files]}


def analysis_fields(bundle: Path, analysis: dict[str, Any], catalogue: cat.Catalogue | None = None
                    ) -> dict[str, Any]:
    """`known_matches` (the entries that match, best first) and `known_catalogue` for analysis.json.

    Without `catalogue` the shipped one plus REPRO_CATALOGUE is used; if that cannot be read, the
    analysis says so in `known_error` instead of failing (capture must not lose its analysis)."""
    try:
        catalogue = catalogue or cat.load()
    except cat.CatalogueError as exc:
        return {"known_matches": [], "known_catalogue": None, "known_error": exc.message}
    ev = gather(bundle, analysis)
    return {"known_matches": [m.to_dict() for m in check_all(catalogue, ev) if m.matched],
            "known_catalogue": catalogue_info(catalogue)}


# -- wording ------------------------------------------------------------------------------------------------
def _state(u: dict[str, Any]) -> str:
    return f"{'PR, ' if u.get('kind') == 'pr' else ''}{u.get('state')}"


def _affects(m: dict[str, Any]) -> str:
    return f"affects {m['affected']}" if m.get("affected") else "affected versions not recorded"


def related_refs(m: dict[str, Any]) -> str:
    """`vllm-project/vllm#52247 (open; affects >=0.11; your version 0.20.2: affected), vllm-project/vllm#52365 (PR, open)`."""
    ups = m.get("upstream") or []
    if not ups:
        return "no upstream issue yet"
    first, rest = ups[0], ups[1:]
    head = f"{first['ref']} ({_state(first)}; {_affects(m)}; {m['version']['text']})"
    return ", ".join([head] + [f"{u['ref']} ({_state(u)})" for u in rest])


def no_match_text(analysis: dict[str, Any]) -> str:
    info = analysis.get("known_catalogue")
    if not info:
        return f"known-hang catalogue unreadable: {analysis.get('known_error') or 'not checked'}"
    return f"no known match among {info['entries']} entries (catalogue of {info['date']})"


def possibly_related(analysis: dict[str, Any]) -> str:
    """The "Possibly related" line of ISSUE.md: the upstream numbers and the version verdict, or why none."""
    ms = analysis.get("known_matches") or []
    injected = [m for m in ms if m["origin"] == "injected"]
    if injected:
        return (f"Possibly related: none upstream. This stall was injected by repro (`{injected[0]['id']}`: "
                f"{injected[0]['title']}); it tests the kit and is not a vLLM bug.")
    if not ms:
        fn = (analysis.get("stuck_frame") or "").split(" (")[0]
        hint = f"; search vLLM's issues for `{fn}` before filing" if fn and analysis.get("verdict") in (
            "blocked", "busy") else ""
        return f"Possibly related: {no_match_text(analysis)} of repro's known-hang list{hint}."
    parts = []
    for m in ms[:3]:
        refs = related_refs(m)
        parts.append(f"{refs} [`{m['id']}`: {m['title']}]" if m.get("upstream") else
                     f"`{m['id']}`: {m['title']} ({refs})")
    return ("Possibly related: " + "; ".join(parts) + ". repro matched the bundle against its catalogue of known "
            "hangs: a pointer to read, not a diagnosis.")


def summary_lines(analysis: dict[str, Any]) -> list[str]:
    """What `repro analyze` prints about known problems: the best match with its link and workaround, or none."""
    ms = analysis.get("known_matches") or []
    if not ms:
        return [f"known: {no_match_text(analysis)}"]
    m = ms[0]
    if m["origin"] == "injected":
        lines = [f"known: injected by repro: {m['title']} [entry {m['id']}, score {m['score']:.2f}]"]
    else:
        lines = [f"known: {related_refs(m)}: {m['title']} [entry {m['id']}, score {m['score']:.2f}]"]
        lines += [f"       {u['url']}" for u in (m.get("upstream") or [])[:2]]
    lines.append(f"       workaround: {m['workaround']}")
    if len(ms) > 1:
        lines.append("       also matches: " + ", ".join(f"{x['id']} ({x['score']:.2f})" for x in ms[1:]))
    return lines

