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
