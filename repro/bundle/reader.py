"""Open a bundle given as a directory or as its `.tar.gz`, with one clear error when it is not one."""

from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from repro.bundle.manifest import KIND, MANIFEST
from repro.errors import UsageError
from repro.formats import BUNDLE_FORMAT, PROCESSES_FORMAT, check, read_json

PROCESSES = "processes.json"


def open_bundle(path: str | Path, scratch: Path | None = None) -> Path:
    """The bundle directory for `path` (a tarball is unpacked into `scratch` or a temporary directory)."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such file or directory")
    if p.is_file():
        if not tarfile.is_tarfile(p):
            raise UsageError(f"{path}: not a repro bundle (neither a bundle directory nor a .tar.gz)")
        dest = scratch or Path(tempfile.mkdtemp(prefix="repro-bundle-"))
        try:
            d = unpack(p, dest)
        except (ValueError, tarfile.TarError, OSError) as exc:
            raise UsageError(f"{path}: not a repro bundle ({exc})") from None
        p = d
    manifest = p / MANIFEST
    if not manifest.is_file():
        raise UsageError(f"{path}: not a repro bundle (no {MANIFEST})")
    try:
        data = json.loads(manifest.read_text())
    except ValueError:
        raise UsageError(f"{path}: not a repro bundle ({MANIFEST} is not JSON)") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise UsageError(f"{path}: not a repro bundle ({MANIFEST} was not written by repro)")
    check(BUNDLE_FORMAT, data, f"{path}/{MANIFEST}")  # a bundle of a newer repro: one line, upgrade
    return p


def manifest(bundle_dir: Path) -> dict[str, Any]:
    return read_json(BUNDLE_FORMAT, bundle_dir / MANIFEST)


def bundle_processes(bundle_dir: Path) -> list[dict[str, Any]]:
    """The process records of processes.json (version 1: a bare list; 2: under "processes"); [] when absent."""
    p = Path(bundle_dir) / PROCESSES
    if not p.is_file():
        return []
    doc = json.loads(p.read_text())
    if isinstance(doc, list):  # version 1 (before the file carried schema and version)
        return [r for r in doc if isinstance(r, dict)]
    return [r for r in check(PROCESSES_FORMAT, doc, str(p)).get("processes") or [] if isinstance(r, dict)]

def unpack(tar_path: Path, dest: Path) -> Path:
    """Unpack a bundle tarball safely (no absolute paths or ..); return the bundle directory."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "r:gz") as tf:
        members = []
        for m in tf.getmembers():
            if m.name.startswith("/") or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
                continue
            members.append(m)
        tf.extractall(dest, members=members)  # noqa: S202 - filtered above
        tops = {Path(m.name).parts[0] for m in members}
    if len(tops) != 1:
        raise ValueError(f"{tar_path}: not a single-directory bundle")
    return dest / tops.pop()
