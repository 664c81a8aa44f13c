"""Versions of the files repro writes: one stamp for writers, one check for readers.

Every JSON document repro writes starts with ``"schema": "repro.<kind>"`` and ``"version": N`` (an int).
Writers call :func:`stamp`; every reader of a file another command (or an earlier repro) wrote calls
:func:`check`, which accepts the current version and every older one it knows, reads the older spellings
(``schema_version``, no version at all) as the version they were, and turns a foreign file or a future
version into a one-line :class:`~repro.errors.UsageError` (exit 2) instead of a traceback.

The catalogue of kinds and their versions is :data:`FORMATS`; FORMATS.md describes each file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro.errors import UsageError


@dataclass(frozen=True)
class Format:
    """One file format: its schema name, the version written today, and the oldest version still read."""

    schema: str
    version: int
    oldest: int = 1
    # the key an earlier repro used for the version instead of "version" (e.g. "schema_version")
    legacy_version_key: str | None = None
    # what an earlier repro's file without any schema key reads as (None: such a file is foreign)
    unversioned: int | None = None


FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add a format to the catalogue (each module that writes a file registers it once, at import)."""
    FORMATS[fmt.schema] = fmt
    return fmt


def stamp(fmt: Format, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with ``schema`` and ``version`` first (a new dict; ``doc`` is not changed)."""
    rest = {k: v for k, v in doc.items() if k not in ("schema", "version")}
    return {"schema": fmt.schema, "version": fmt.version, **rest}


def version_of(fmt: Format, doc: Any, where: str) -> int:
    """The version of ``doc`` as ``fmt``; a one-line UsageError for a foreign or future file."""
    if not isinstance(doc, dict):
        raise UsageError(f"{where}: not a {fmt.schema} file (a JSON object expected, got {type(doc).__name__})")
    schema = doc.get("schema")
    if schema is None:
        if fmt.legacy_version_key and isinstance(doc.get(fmt.legacy_version_key), int):
            v = int(doc[fmt.legacy_version_key])
        elif fmt.unversioned is not None:
            v = fmt.unversioned
        else:
            raise UsageError(f"{where}: not a {fmt.schema} file (no \"schema\" key)")
    elif schema != fmt.schema:
        raise UsageError(f"{where}: a {schema} file, not {fmt.schema}")
    else:
        v = doc.get("version", doc.get(fmt.legacy_version_key) if fmt.legacy_version_key else None)
        if not isinstance(v, int) or isinstance(v, bool):
            raise UsageError(f"{where}: {fmt.schema} file without an integer \"version\"")
    if v > fmt.version:
        raise UsageError(f"{where}: {fmt.schema} version {v} is newer than this repro reads "
                         f"(up to {fmt.version}); upgrade repro: pip install -U repro")
    if v < fmt.oldest:
        raise UsageError(f"{where}: {fmt.schema} version {v} is older than this repro reads "
                         f"(from {fmt.oldest}); open it with an older repro")
    return v


def check(fmt: Format, doc: Any, where: str) -> dict[str, Any]:
    """``doc`` once :func:`version_of` accepts it (returned unchanged, for chaining)."""
    version_of(fmt, doc, where)
    return doc


def read_json(fmt: Format, path: Path) -> dict[str, Any]:
    """Read and check a JSON file of format ``fmt``; unreadable or invalid JSON is a one-line UsageError."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: not a {fmt.schema} file (invalid JSON: {e})") from None
    return check(fmt, doc, str(path))


def read_optional(fmt: Format, path: Path | None) -> dict[str, Any] | None:
    """A file another command wrote that may be absent or torn (a killed run): None then, never fatal; a
    whole document that is foreign or of a future version is still a one-line UsageError."""
    if path is None:
        return None
    try:
        doc = json.loads(Path(path).read_text(errors="replace"))
    except (OSError, ValueError):
        return None
    return check(fmt, doc, str(path))


def check_lines(fmt: Format, first: Any, where: str) -> int:
    """The version of a JSON-lines file from its first record: a record with ``schema`` is checked as the
    header of ``fmt``; one without (every file repro wrote before headers) reads as ``fmt.unversioned``."""
    if isinstance(first, dict) and "schema" not in first and fmt.unversioned is not None:
        return fmt.unversioned
    return version_of(fmt, first, where)


# -- the catalogue: every file repro writes (FORMATS.md describes each) ----------------------------------
# Run directories (stress, watch, bisect) and bundles. ``unversioned=1``: files an earlier repro wrote
# without any schema key read as version 1; ``legacy_version_key``: the key an earlier repro used instead.
SCENARIO_FORMAT = register(Format("repro.scenario", 2, legacy_version_key="schema_version", unversioned=1))
STRESS_SUMMARY_FORMAT = register(Format("repro.stress.summary", 1))
FLEET_SUMMARY_FORMAT = register(Format("repro.stress.fleet", 1))
DETECTION_FORMAT = register(Format("repro.detection", 1, unversioned=1))
EVENTS_FORMAT = register(Format("repro.events", 2, unversioned=1))  # v2: a header line (origin, t_is)
REQUESTS_FORMAT = register(Format("repro.requests", 1, unversioned=1))
INJECTED_FORMAT = register(Format("repro.injected", 1, unversioned=1))
WATCH_FORMAT = register(Format("repro.watch", 1, unversioned=1))
WATCH_STATE_FORMAT = register(Format("repro.watch-state", 1))
BUNDLE_FORMAT = register(Format("repro.bundle", 1, legacy_version_key="schema_version"))
ANALYSIS_FORMAT = register(Format("repro.analysis", 1, unversioned=1))
PROCESSES_FORMAT = register(Format("repro.processes", 2))  # 1: a bare JSON list (read by bundle.reader)
STORAGE_FORMAT = register(Format("repro.storage", 1, unversioned=1))
SERVER_ENV_FORMAT = register(Format("repro.server-env", 1))
CLIENTS_FORMAT = register(Format("repro.clients", 1))
GPU_FORMAT = register(Format("repro.gpu", 1))
METRICS_SAMPLES_FORMAT = register(Format("repro.metrics-samples", 1, unversioned=1))
JOURNAL_FORMAT = register(Format("repro.bisect.journal", 1, legacy_version_key="version"))
MINIMAL_FORMAT = register(Format("repro.bisect.minimal", 2))
TRIAL_JOB_FORMAT = register(Format("repro.trial-job", 1))
KNOWN_ENTRY_FORMAT = register(Format("repro.known", 1))
KNOWN_CATALOGUE_FORMAT = register(Format("repro.known-catalogue", 1))
KNOWN_CHECK_FORMAT = register(Format("repro.known-check", 1))
