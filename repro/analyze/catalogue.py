"""The known-hang catalogue: TOML files of entries, each a known problem and the rule that recognises it.

Shipped with the package in ``repro/known/*.toml``; ``--catalogue PATH`` (a file or a directory of
``*.toml``) or ``REPRO_CATALOGUE`` (paths separated by ``:``) add local files, whose entries replace
shipped ones with the same id. A file::

    schema = "repro.known"
    version = 1
    updated = 2026-12-01          # the date the file's entries were last checked against upstream

    [[entry]]
    id = "vllm-52247"             # unique; lowercase letters, digits, '-', '.'
    title = "..."
    origin = "upstream"           # upstream | injected (repro's own fault plugin) | repro (found by repro)
    status = "open"               # open | fixed | closed | unreported | injected | symptom
    upstream = [{ref = "vllm-project/vllm#52247", kind = "issue", state = "open"}]
    affected = ">=0.11"           # PEP 440 specifier of the vLLM versions affected ("" = not known)
    fixed_in = ""                 # first vLLM version known to carry the fix ("" = none known)
    version_note = "..."          # what the version data rests on
    workaround = "..."
    evidence_date = 2026-08-14    # when the evidence was published
    evidence = "..."              # what the upstream thread shows (quoted stack, log lines)
    min_score = 0.0               # optional: also needs this score (0-1) besides its required parts

    [[entry.when]]                # one rule part; see CONDITION_KEYS for the kinds and their fields
    kind = "stack"
    process = "engine_core"
    thread = "main"
    frames = ['get_output \\(.*gpu_model_runner\\.py\\)', 'step_with_batch_queue']
    required = true
    weight = 3

A malformed file or entry is a :class:`CatalogueError`: one line naming the file, the entry and the field.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from repro.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SCHEMA, VERSION = "repro.known", 1
ENV = "REPRO_CATALOGUE"
SHIPPED = Path(__file__).resolve().parents[1] / "known"

ORIGINS = ("upstream", "injected", "repro")
STATUSES = ("open", "fixed", "closed", "unreported", "injected", "symptom")
ROLES = ("engine_core", "worker", "api_server", "launcher", "other", "any")
VERDICTS = ("blocked", "busy", "progressing", "idle", "unknown")
FINDINGS = ("death", "leak", "exhaustion")
METRIC_KEYS = ("running", "waiting", "kv_cache", "tokens", "preemptions")
_COMPARE = re.compile(r"^\s*(==|!=|>=|<=|>|<)\s*(-?\d+(?:\.\d+)?)\s*$")
_ID = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_REF = re.compile(r"^(?P<repo>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)#(?P<number>\d+)$")

# Every condition has: kind, required, unless, weight, note. The kind's own fields:
COMMON_KEYS = {"kind", "required", "unless", "weight", "note"}
CONDITION_KEYS = {
    "stack": {"process", "thread", "frames"},  # frames: regexes, innermost first, on "function (file.py)"
    "native": {"process", "thread", "frames"},  # frames: regexes on the thread's --native frames
    "log": {"patterns", "match"},  # regexes on the log tail and stats lines; match: any | all
    "metrics": set(METRIC_KEYS),  # comparisons like ">0", "==0", "<0.05" (tokens/preemptions: change)
    "storage": {"finding", "cause", "orphans"},  # finding: death | leak | exhaustion (any of them)
    "injected": {"fault", "frame"},  # fault: regex on an active injected fault kind; frame: its stack frame
    "server": {"args", "env"},  # args: regex on the server command; env: {NAME = regex}
    "gpu": {"name", "state"},  # name: regex on the GPU names; state: busy | idle | mixed
    "verdict": {"is"},  # the bundle's verdict is one of these
}


class CatalogueError(UsageError):
    """A catalogue file or entry that does not follow the schema (exit 2)."""


@dataclass(frozen=True)
class Upstream:
    repo: str
    number: int
    kind: str  # issue | pr
    state: str  # open | closed | merged | ...
    note: str = ""

    @property
    def ref(self) -> str:
        return f"{self.repo}#{self.number}"

    @property
    def url(self) -> str:
        return f"https://github.com/{self.repo}/{'pull' if self.kind == 'pr' else 'issues'}/{self.number}"

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "url": self.url, "kind": self.kind, "state": self.state, "note": self.note}


@dataclass(frozen=True)
class Condition:
    kind: str
    params: dict[str, Any]
    required: bool = False
    unless: bool = False
    weight: float = 1.0
    note: str = ""

    def describe(self) -> str:
        """The rule part in one line, as `repro known` shows it."""
        p = self.params
        if self.note:
            return self.note
        if self.kind in ("stack", "native"):
            return (f"{self.kind} of {p.get('process', 'any')} thread {p.get('thread', 'main')}: "
                    + " < ".join(p["frames"]))
        if self.kind == "log":
            return f"log has {p.get('match', 'any')} of: " + " | ".join(p["patterns"])
        if self.kind == "metrics":
            return "metrics " + ", ".join(f"{k}{v}" for k, v in p.items())
        if self.kind == "server":
            return "server " + ", ".join([f"args ~ {p['args']}"] * ("args" in p) +
                                         [f"env {k} ~ {v}" for k, v in (p.get("env") or {}).items()])
        return f"{self.kind} " + ", ".join(f"{k}={v}" for k, v in p.items())


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    origin: str
    status: str
    upstream: tuple[Upstream, ...]
    affected: str
    fixed_in: str
    version_note: str
    workaround: str
    evidence_date: _dt.date
    evidence: str
    conditions: tuple[Condition, ...]
    source: str  # the file it came from
    min_score: float = 0.0

    @property
    def refs(self) -> str:
        return ", ".join(u.ref for u in self.upstream) or "no upstream issue"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "origin": self.origin, "status": self.status,
                "upstream": [u.to_dict() for u in self.upstream], "affected": self.affected,
                "fixed_in": self.fixed_in, "version_note": self.version_note, "workaround": self.workaround,
                "evidence_date": self.evidence_date.isoformat(), "evidence": self.evidence, "source": self.source,
                "min_score": self.min_score,
                "when": [{"kind": c.kind, **c.params, "required": c.required, "unless": c.unless,
                          "weight": c.weight, "rule": c.describe()} for c in self.conditions]}


@dataclass
class Catalogue:
    entries: list[Entry]
    files: list[tuple[str, _dt.date]] = field(default_factory=list)  # (path, updated)

    @property
    def date(self) -> str:
        return max((d for _, d in self.files), default=None).isoformat() if self.files else "unknown"

    def get(self, entry_id: str) -> Entry | None:
        return next((e for e in self.entries if e.id == entry_id), None)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "repro.known-catalogue", "version": VERSION, "date": self.date,
                "files": [{"path": p, "updated": d.isoformat()} for p, d in self.files],
                "entries": [e.to_dict() for e in self.entries]}


# -- validation ---------------------------------------------------------------------------------------------
class _Where:
    """Builds the one-line error: FILE: entry ID: field FIELD: problem."""

    def __init__(self, path: Path) -> None:
        self.path, self.entry = path, None

    def fail(self, field_name: str, problem: str) -> CatalogueError:
        who = f"entry {self.entry!r}: " if self.entry else ""
        return CatalogueError(f"{self.path}: {who}field {field_name!r}: {problem}",
                              help="The catalogue format is in README.md (Known hangs); `repro known` lists the "
                                   "shipped entries as examples.")


def _str(w: _Where, d: dict[str, Any], key: str, required: bool = True, default: str = "") -> str:
    v = d.get(key, None)
    if v is None:
        if required:
            raise w.fail(key, "missing")
        return default
    if not isinstance(v, str):
        raise w.fail(key, f"must be a string, not {type(v).__name__}")
    return v


def _choice(w: _Where, d: dict[str, Any], key: str, choices: tuple[str, ...], default: str | None = None,
            label: str | None = None) -> str:
    v = d.get(key, default)
    if v is None:
        raise w.fail(label or key, "missing")
    if v not in choices:
        raise w.fail(label or key, f"{v!r} is not one of {', '.join(choices)}")
    return str(v)


def _date(w: _Where, d: dict[str, Any], key: str) -> _dt.date:
    v = d.get(key)
    if isinstance(v, _dt.datetime):
        return v.date()
    if isinstance(v, _dt.date):
        return v
    if isinstance(v, str):
        try:
            return _dt.date.fromisoformat(v)
        except ValueError:
            pass
    raise w.fail(key, "missing" if v is None else f"{v!r} is not a date (YYYY-MM-DD)")


def _regex(w: _Where, field_name: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise w.fail(field_name, "must be a non-empty regular expression")
    try:
        re.compile(v)
    except re.error as exc:
        raise w.fail(field_name, f"{v!r} is not a regular expression ({exc})") from None
    return v


def _regex_list(w: _Where, field_name: str, v: Any) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise w.fail(field_name, "must be a non-empty list of regular expressions")
    return [_regex(w, f"{field_name}[{i}]", x) for i, x in enumerate(v)]


def _condition(w: _Where, i: int, raw: Any) -> Condition:
    name = f"when[{i}]"
    if not isinstance(raw, dict):
        raise w.fail(name, "must be a table ([[entry.when]])")
    kind = raw.get("kind")
    if kind not in CONDITION_KEYS:
        raise w.fail(f"{name}.kind", f"{kind!r} is not one of {', '.join(CONDITION_KEYS)}")
    extra = set(raw) - COMMON_KEYS - CONDITION_KEYS[kind]
    if extra:
        raise w.fail(f"{name}.{sorted(extra)[0]}", f"unknown field for kind {kind!r} (known: "
                     f"{', '.join(sorted(CONDITION_KEYS[kind] | COMMON_KEYS))})")
    params: dict[str, Any] = {}
    if kind in ("stack", "native"):
        proc = raw.get("process", "any")
        procs = proc if isinstance(proc, list) else [proc]
        if not procs or any(p not in ROLES for p in procs):
            raise w.fail(f"{name}.process", f"{proc!r}: use one or a list of {', '.join(ROLES)}")
        thread = raw.get("thread", "main")
        if not isinstance(thread, str):
            raise w.fail(f"{name}.thread", "must be main, any or a regular expression on the thread name")
        if thread not in ("main", "any"):
            _regex(w, f"{name}.thread", thread)
        params = {"process": proc, "thread": thread, "frames": _regex_list(w, f"{name}.frames", raw.get("frames"))}
    elif kind == "log":
        params = {"patterns": _regex_list(w, f"{name}.patterns", raw.get("patterns"))}
        params["match"] = _choice(w, raw, "match", ("any", "all"), "any", f"{name}.match")
    elif kind == "metrics":
        if not set(raw) & set(METRIC_KEYS):
            raise w.fail(name, f"a metrics condition needs one of {', '.join(METRIC_KEYS)}")
        for k in METRIC_KEYS:
            if k in raw:
                if not isinstance(raw[k], str) or not _COMPARE.match(raw[k]):
                    raise w.fail(f"{name}.{k}", f"{raw[k]!r} is not a comparison like '>0', '==0', '<0.05'")
                params[k] = raw[k].replace(" ", "")
    elif kind == "storage":
        if "finding" in raw:
            f = raw["finding"] if isinstance(raw["finding"], list) else [raw["finding"]]
            if not f or any(x not in FINDINGS for x in f):
                raise w.fail(f"{name}.finding", f"{raw['finding']!r}: use one or a list of {', '.join(FINDINGS)}")
            params["finding"] = f
        if "cause" in raw:
            params["cause"] = _regex(w, f"{name}.cause", raw["cause"])
        if "orphans" in raw:
            if not isinstance(raw["orphans"], bool):
                raise w.fail(f"{name}.orphans", "must be true or false")
            params["orphans"] = raw["orphans"]
        if not params:
            raise w.fail(name, "a storage condition needs finding, cause or orphans")
    elif kind == "injected":
        params = {"fault": _regex(w, f"{name}.fault", raw.get("fault"))}
        if "frame" in raw:
            params["frame"] = _regex(w, f"{name}.frame", raw["frame"])
    elif kind == "server":
        if "args" in raw:
            params["args"] = _regex(w, f"{name}.args", raw["args"])
        if "env" in raw:
            env = raw["env"]
            if not isinstance(env, dict) or not env:
                raise w.fail(f"{name}.env", "must be a table of NAME = regular expression")
            params["env"] = {k: _regex(w, f"{name}.env.{k}", v) for k, v in env.items()}
        if not params:
            raise w.fail(name, "a server condition needs args or env")
    elif kind == "gpu":
        if "name" in raw:
            params["name"] = _regex(w, f"{name}.name", raw["name"])
        if "state" in raw:
            params["state"] = _choice(w, raw, "state", ("busy", "idle", "mixed"), label=f"{name}.state")
        if not params:
            raise w.fail(name, "a gpu condition needs name or state")
    elif kind == "verdict":
        v = raw.get("is")
        v = v if isinstance(v, list) else [v]
        if not v or any(x not in VERDICTS for x in v):
            raise w.fail(f"{name}.is", f"{raw.get('is')!r}: use one or a list of {', '.join(VERDICTS)}")
        params = {"is": v}
    for flag in ("required", "unless"):
        if not isinstance(raw.get(flag, False), bool):
            raise w.fail(f"{name}.{flag}", "must be true or false")
    weight = raw.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        raise w.fail(f"{name}.weight", f"{weight!r} must be a positive number")
    if raw.get("required") and raw.get("unless"):
        raise w.fail(f"{name}.unless", "a condition is either required or an unless, not both")
    return Condition(kind, params, bool(raw.get("required", False)), bool(raw.get("unless", False)), float(weight),
                     _str(w, raw, "note", required=False))


ENTRY_KEYS = {"id", "title", "origin", "status", "upstream", "affected", "fixed_in", "version_note", "workaround",
              "evidence_date", "evidence", "when", "min_score"}


def _upstream(w: _Where, raw: Any) -> tuple[Upstream, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise w.fail("upstream", "must be a list of {ref, kind, state} tables")
    out = []
    for i, u in enumerate(raw):
        if not isinstance(u, dict):
            raise w.fail(f"upstream[{i}]", "must be a table {ref = \"owner/repo#N\", kind, state}")
        extra = set(u) - {"ref", "kind", "state", "note"}
        if extra:
            raise w.fail(f"upstream[{i}].{sorted(extra)[0]}", "unknown field (known: ref, kind, state, note)")
        m = _REF.match(str(u.get("ref", "")))
        if not m:
            raise w.fail(f"upstream[{i}].ref", f"{u.get('ref')!r} is not owner/repo#NUMBER")
        out.append(Upstream(m.group("repo"), int(m.group("number")), _choice(w, u, "kind", ("issue", "pr"), label=f"upstream[{i}].kind"),
                            _str(w, u, "state"), _str(w, u, "note", required=False)))
    return tuple(out)


def _entry(w: _Where, raw: Any, source: str) -> Entry:
    if not isinstance(raw, dict):
        raise w.fail("entry", "must be a table ([[entry]])")
    w.entry = None
    eid = _str(w, raw, "id")
    if not _ID.match(eid):
        raise w.fail("id", f"{eid!r}: use lowercase letters, digits, '-' and '.'")
    w.entry = eid
    extra = set(raw) - ENTRY_KEYS
    if extra:
        raise w.fail(sorted(extra)[0], f"unknown field (known: {', '.join(sorted(ENTRY_KEYS))})")
    affected = _str(w, raw, "affected", required=False)
    try:
        SpecifierSet(affected)
    except InvalidSpecifier:
        raise w.fail("affected", f"{affected!r} is not a version specifier like '>=0.24,<0.32'") from None
    fixed_in = _str(w, raw, "fixed_in", required=False)
    if fixed_in:
        try:
            Version(fixed_in)
        except InvalidVersion:
            raise w.fail("fixed_in", f"{fixed_in!r} is not a version") from None
    when = raw.get("when")
    if not isinstance(when, list) or not when:
        raise w.fail("when", "an entry needs at least one [[entry.when]] rule part")
    conds = tuple(_condition(w, i, c) for i, c in enumerate(when))
    if not any(c.required for c in conds):
        raise w.fail("when", "at least one rule part must be required = true (else every bundle would match)")
    min_score = raw.get("min_score", 0.0)
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not 0 <= min_score <= 1:
        raise w.fail("min_score", f"{min_score!r} must be a number from 0 to 1")
    return Entry(id=eid, title=_str(w, raw, "title"), origin=_choice(w, raw, "origin", ORIGINS),
                 status=_choice(w, raw, "status", STATUSES), upstream=_upstream(w, raw.get("upstream")),
                 affected=affected, fixed_in=fixed_in, version_note=_str(w, raw, "version_note", required=False),
                 workaround=_str(w, raw, "workaround"), evidence_date=_date(w, raw, "evidence_date"),
                 evidence=_str(w, raw, "evidence", required=False), conditions=conds, source=source,
                 min_score=float(min_score))


def load_file(path: Path) -> tuple[list[Entry], _dt.date]:
    """The entries of one catalogue file and its `updated` date."""
    w = _Where(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise CatalogueError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{path}: not valid TOML ({exc})") from None
    if data.get("schema") != SCHEMA:
        raise w.fail("schema", f"must be {SCHEMA!r}, not {data.get('schema')!r}")
    if data.get("version") != VERSION:
        raise w.fail("version", f"this repro reads version {VERSION}, not {data.get('version')!r}")
    extra = set(data) - {"schema", "version", "updated", "entry"}
    if extra:
        raise w.fail(sorted(extra)[0], "unknown top-level field (known: schema, version, updated, entry)")
    updated = _date(w, data, "updated")
    raw = data.get("entry", [])
    if not isinstance(raw, list):
        raise w.fail("entry", "must be an array of tables ([[entry]])")
    entries, seen = [], set()
    for r in raw:
        e = _entry(w, r, str(path))
        if e.id in seen:
            raise w.fail("id", "the same id twice in one file")
        seen.add(e.id)
        entries.append(e)
    return entries, updated


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(path.glob("*.toml"))
    if path.is_file():
        return [path]
    raise CatalogueError(f"{path}: no such catalogue file or directory",
                         help="--catalogue / REPRO_CATALOGUE name a .toml file or a directory of them.")


def load(extra: list[str | Path] | None = None, env: dict[str, str] | None = None,
         shipped: Path | None = SHIPPED) -> Catalogue:
    """The shipped catalogue plus `extra` paths and those in REPRO_CATALOGUE (later files override ids)."""
    env = os.environ if env is None else env
    paths: list[Path] = [shipped] if shipped is not None else []
    paths += [Path(p) for p in (env.get(ENV) or "").split(os.pathsep) if p]
    paths += [Path(p) for p in extra or []]
    by_id: dict[str, Entry] = {}
    files = []
    for p in paths:
        for f in _files(p):
            entries, updated = load_file(f)
            files.append((f"repro/known/{f.name}" if f.parent == shipped else str(f), updated))
            for e in entries:
                by_id.pop(e.id, None)  # a later file's entry replaces an earlier one (and moves to the end)
                by_id[e.id] = e
    return Catalogue(list(by_id.values()), files)
