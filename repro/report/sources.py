"""Which kind of run a directory holds, and lenient readers for what runs write.

A report is made from whatever the run left, including a run that was killed: a torn last
line of a JSONL file, a missing summary.json or a half-written CSV row is skipped, never fatal.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro.errors import UsageError
from repro.formats import BUNDLE_FORMAT, FLEET_SUMMARY_FORMAT, STRESS_SUMMARY_FORMAT, check

STRESS, WATCH, BISECT, BUNDLE = "stress", "watch", "bisect", "bundle"
STRESS_SCHEMA = STRESS_SUMMARY_FORMAT.schema
FLEET_SCHEMA = FLEET_SUMMARY_FORMAT.schema

NOT_A_RUN_HELP = ("Give a directory that `repro stress`, `repro watch` or `repro bisect` wrote (repro-runs/...), "
                  "or a bundle (bundle-001/ or bundle-001.tar.gz).")


@dataclass
class RunDir:
    kind: str  # stress | watch | bisect | bundle
    path: Path  # the directory read (a tarball is unpacked into a temporary directory first)
    given: Path  # what the user named
    tarball: Path | None = None  # the .tar.gz it came from


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every well-formed JSON object line; a torn or damaged line is skipped."""
    out: list[dict[str, Any]] = []
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except OSError:
        return out
    with f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def _first_event(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            line = f.readline()
        rec = json.loads(line)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def identify(path: str | Path, scratch: Path | None = None) -> RunDir:
    """The kind of run at ``path``; UsageError (exit 2, one line) when it is none of them."""
    given = Path(path)
    if not given.exists():
        raise UsageError(f"{path}: no such file or directory", help=NOT_A_RUN_HELP)
    if given.is_file():
        if not tarfile.is_tarfile(given):
            raise UsageError(f"{path}: not a run directory or a bundle tarball", help=NOT_A_RUN_HELP)
        from repro.bundle.reader import open_bundle

        return RunDir(BUNDLE, open_bundle(given, scratch), given, tarball=given)
    d = given
    manifest = read_json(d / "manifest.json")
    if manifest is not None and manifest.get("kind") == "repro-bundle":
        check(BUNDLE_FORMAT, manifest, str(d / "manifest.json"))  # a newer repro's bundle: one line, upgrade
        return RunDir(BUNDLE, d, given)
    if (d / "journal.jsonl").is_file():
        return RunDir(BISECT, d, given)
    summary = read_json(d / "summary.json")
    if summary is not None and summary.get("schema") in (STRESS_SCHEMA, FLEET_SCHEMA):
        check(FLEET_SUMMARY_FORMAT if summary["schema"] == FLEET_SCHEMA else STRESS_SUMMARY_FORMAT, summary,
              str(d / "summary.json"))
    if summary is not None and summary.get("schema") == FLEET_SCHEMA:
        dirs = [str(r.get("dir")) for r in summary.get("replicas") or [] if r.get("dir")]
        raise UsageError(f"{path}: a stress fleet (--executor ray): report each replica's run directory",
                         help="e.g. repro report " + (dirs[0] if dirs else f"{path}/replica-0"))
    if (d / "watch.json").is_file():
        return RunDir(WATCH, d, given)
    first = _first_event(d / "events.jsonl")
    if first is not None and first.get("event") == "watch-start":
        return RunDir(WATCH, d, given)
    if (summary is not None and summary.get("schema") == STRESS_SCHEMA) or \
            any((d / n).is_file() for n in ("timeline.csv", "requests.jsonl", "scenario.json")):
        return RunDir(STRESS, d, given)
    raise UsageError(f"{path}: not a repro run directory (no summary.json, events.jsonl, journal.jsonl or "
                     f"manifest.json)", help=NOT_A_RUN_HELP)
