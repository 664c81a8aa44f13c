"""Where a report's facts come from: a bundle, the run directory it belongs to, or a run directory alone.

``repro issue PATH`` takes a bundle (directory or ``.tar.gz``) or a run directory of ``repro stress`` /
``repro watch`` / ``repro trial`` (with or without a bundle in it). :func:`open_source` finds both halves
and :class:`ReportSource` reads each file from the best place: the bundle's ``context/`` for what was true at
capture, the run directory for what the run ended with (``summary.json``: the final census).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro.bundle.reader import open_bundle
from repro.bundle.manifest import MANIFEST
from repro.errors import UsageError
from repro.formats import (BUNDLE_FORMAT, DETECTION_FORMAT, SCENARIO_FORMAT, STRESS_SUMMARY_FORMAT, check,
                           read_optional)

RUN_FILES = ("summary.json", "scenario.json", "events.jsonl", "watch.json")
SUMMARY_SCHEMA = STRESS_SUMMARY_FORMAT.schema


def read_text(p: Path | None, default: str = "") -> str:
    if p is None:
        return default
    try:
        return p.read_text(errors="replace")
    except OSError:
        return default


def read_json(p: Path | None) -> Any:
    try:
        return json.loads(read_text(p, "null") or "null")
    except ValueError:
        return None


def read_jsonl(p: Path | None) -> list[dict[str, Any]]:
    out = []
    for line in read_text(p).splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def is_run_dir(p: Path) -> bool:
    return p.is_dir() and not (p / MANIFEST).is_file() and any((p / n).is_file() for n in RUN_FILES)


def _bundles_in(run_dir: Path) -> list[Path]:
    found = [d for d in run_dir.glob("bundle-*") if d.is_dir() and (d / MANIFEST).is_file()]
    return sorted(found, key=lambda d: int(re.sub(r"\D", "", d.name) or 0))


@dataclass
class ReportSource:
    bundle: Path | None  # the bundle directory (stacks, context at capture), when there is one
    run_dir: Path | None  # the run directory (summary.json, events, the server log), when known
    tarball: Path | None = None  # the bundle's .tar.gz (to attach)
    notes: list[str] = field(default_factory=list)  # what the caller should tell the user (several bundles, ...)

    # -- files -----------------------------------------------------------------------------
    def ctx(self, name: str) -> Path | None:
        """`name` from the bundle's context/ when it is there, else from the run directory."""
        for p in ((self.bundle / "context" / name) if self.bundle else None, (self.run_dir / name) if self.run_dir else None):
            if p is not None and p.is_file():
                return p
        return None

    def run_file(self, name: str) -> Path | None:
        p = (self.run_dir / name) if self.run_dir else None
        return p if p is not None and p.is_file() else None

    @property
    def manifest(self) -> dict[str, Any]:
        return (read_optional(BUNDLE_FORMAT, self.bundle / MANIFEST) if self.bundle else None) or {}

    @property
    def scenario(self) -> dict[str, Any]:
        return read_optional(SCENARIO_FORMAT, self.ctx("scenario.json")) or {}

    @property
    def summary(self) -> dict[str, Any]:
        """The run's summary.json (stress, trial): what the run ended with; {} when there is none."""
        s = read_json(self.run_file("summary.json"))
        if not isinstance(s, dict) or s.get("schema") != SUMMARY_SCHEMA:
            return {}  # none, torn, or a fleet's (repro.stress.fleet): no stress summary
        return check(STRESS_SUMMARY_FORMAT, s, str(self.run_file("summary.json")))

    @property
    def detection(self) -> dict[str, Any]:
        d = read_optional(DETECTION_FORMAT, self.ctx("detection.json")) or self.manifest.get("detection") \
            or self.summary.get("stall")
        return d if isinstance(d, dict) else {}

    @property
    def events(self) -> list[dict[str, Any]]:
        """The run's events: the run directory's whole file when there is one, else the bundle's copy."""
        run = self.run_file("events.jsonl")
        return read_jsonl(run if run is not None else self.ctx("events.jsonl"))

    def log_text(self, max_bytes: int = 4_000_000) -> tuple[str, str | None]:
        """(the server log's tail, where it was read): the bundle's tail, else the run's own server log."""
        if self.bundle is not None and (self.bundle / "context" / "server.log.tail").is_file():
            return read_text(self.bundle / "context" / "server.log.tail"), "context/server.log.tail"
        for p in self._run_logs():
            try:
                with open(p, "rb") as f:
                    f.seek(0, 2)
                    f.seek(max(0, f.tell() - max_bytes))
                    return f.read().decode("utf-8", "replace"), str(p)
            except OSError:
                continue
        return "", None

    def _run_logs(self) -> list[Path]:
        out = []
        info = self.scenario.get("server_log") or {}
        if info.get("path"):
            out.append(Path(info["path"]))
        if self.run_dir is not None:
            out += sorted(self.run_dir.glob("server*.log"))
        return [p for p in out if p.is_file()]

    @property
    def kind(self) -> str:
        return "bundle" if self.bundle is not None else "run directory"

    @property
    def label(self) -> str:
        return (self.tarball or self.bundle or self.run_dir or Path("?")).name


def open_source(path: str | Path) -> ReportSource:
    """A bundle (dir or .tar.gz; its run directory when it sits in one) or a run directory (its last bundle)."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such file or directory")
    if is_run_dir(p):
        bundles = _bundles_in(p)
        notes = []
        if len(bundles) > 1:
            notes.append(f"{p} holds {len(bundles)} bundles: rendering the last, {bundles[-1].name} "
                         "(pass another bundle directory to report it)")
        return ReportSource(bundles[-1] if bundles else None, p, None, notes)
    if p.is_dir() and not (p / MANIFEST).is_file():
        raise UsageError(f"{path}: neither a repro bundle nor a run directory (no {MANIFEST}, "
                         f"no {' / '.join(RUN_FILES)})")
    tarball = p if p.is_file() else None
    bundle = open_bundle(p)
    run_dir = bundle.parent if tarball is None and is_run_dir(bundle.parent) else None
    if tarball is not None and tarball.name.endswith(".tar.gz") and is_run_dir(tarball.parent):
        run_dir = tarball.parent  # <run>/bundle-001.tar.gz: its run directory is beside it
    if tarball is None and (bundle.parent / f"{bundle.name}.tar.gz").is_file():
        tarball = bundle.parent / f"{bundle.name}.tar.gz"
    return ReportSource(bundle, run_dir, tarball)
