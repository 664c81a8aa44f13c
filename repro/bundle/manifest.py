"""A bundle's manifest: its file name, its format version, and the digest recorded for each collected file.

``manifest.json`` is written last by :class:`repro.bundle.writer.BundleWriter` and read by every reader of a
bundle (:mod:`repro.bundle.reader`); ``kind`` is ``repro-bundle`` in every bundle repro wrote.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from repro.formats import BUNDLE_FORMAT, read_json

MANIFEST = "manifest.json"
KIND = "repro-bundle"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    """manifest.json, its schema and version checked (an earlier repro's ``schema_version`` reads as 1)."""
    return read_json(BUNDLE_FORMAT, Path(bundle_dir) / MANIFEST)
