"""A bundle's manifest: its file name, its format version, and the digest recorded for each collected file.

``manifest.json`` is written last by :class:`repro.bundle.writer.BundleWriter` and read by every reader of a
bundle (:mod:`repro.bundle.reader`); ``kind`` is ``repro-bundle`` in every bundle repro wrote.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

BUNDLE_SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
KIND = "repro-bundle"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    """The manifest of a bundle directory (already known to be one: see :func:`repro.bundle.reader.open_bundle`)."""
    return json.loads((Path(bundle_dir) / MANIFEST).read_text())
