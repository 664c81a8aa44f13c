"""`repro scrub PATH`: the last check of a bundle, on anything a user is about to upload.

PATH is a bundle directory, a `.tar.gz` (or any tarball), any directory (tarballs inside it are read
member by member) or a single file, made by any repro version or by hand. Every file is read and
scanned with the rules capture uses (detect-secrets' detectors plus repro's own); a value found in one
file is looked for in all of them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import click

from repro.secrets import lastcheck
from repro.secrets.envpolicy import EnvPolicy
from repro.secrets.redact import WITHHELD, Redactor
from repro.errors import UsageError

EXIT_FOUND = 1


def _is_tar(p: Path) -> bool:
    return p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")) and tarfile.is_tarfile(p)


@dataclass
class _Tar:
    """A tarball's members (in archive order) and the ones that are not regular files."""

    members: list[tuple[tarfile.TarInfo, bytes]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _read_tar(p: Path) -> _Tar:
    out = _Tar()
    try:
        with tarfile.open(p, "r:*") as tf:
            for m in tf:
                if m.isdir():
                    continue
                if not m.isfile():
                    out.skipped.append((m.name, "not a regular file (link or device): not checked"))
                    continue
                f = tf.extractfile(m)
                out.members.append((m, f.read() if f else b""))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UsageError(f"{p}: cannot read the tarball ({exc})") from None
    return out


@dataclass
class _Source:
    """What scrub reads: members named as they are reported, and where each came from."""

    members: list[lastcheck.Member] = field(default_factory=list)
    skipped: list[lastcheck.FileReport] = field(default_factory=list)
    tars: dict[str, _Tar] = field(default_factory=dict)  # display name of a tarball -> its content


def _add_tar(src: _Source, p: Path, shown: str) -> None:
    t = _read_tar(p)
    src.tars[shown] = t
    src.members += [lastcheck.Member(f"{shown}!{m.name}", data) for m, data in t.members]
    src.skipped += [lastcheck.FileReport(f"{shown}!{n}", error=why) for n, why in t.skipped]


def _read_source(path: Path) -> _Source:
    src = _Source()
    if _is_tar(path):
        _add_tar(src, path, str(path))
        return src
    if path.is_file():
        src.members.append(lastcheck.Member(str(path), path.read_bytes()))
        return src
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            p = Path(root) / name
            shown = str(p)
            if p.is_symlink():
                src.skipped.append(lastcheck.FileReport(shown, error="a symbolic link: not checked"))
            elif _is_tar(p):
                _add_tar(src, p, shown)
            elif p.is_file():
                try:
                    src.members.append(lastcheck.Member(shown, p.read_bytes()))
                except OSError as exc:
                    src.skipped.append(lastcheck.FileReport(shown, error=f"cannot read it ({exc.strerror})"))
            else:
                src.skipped.append(lastcheck.FileReport(shown, error="not a regular file: not checked"))
    return src


def _old_env(name: str, data: bytes) -> dict[str, str] | None:
    """An older bundle's context/server-env.json: a flat map of every variable to its value."""
    if not name.endswith("context/server-env.json"):
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if isinstance(doc, dict) and "schema" not in doc and all(isinstance(v, str) for v in doc.values()):
        return doc
    return None


def _env_by_allow_list(doc: dict[str, str], policy: EnvPolicy) -> bytes:
    kept, withheld = policy.apply(doc)
    return (json.dumps({"schema": "repro.server-env", "version": 1, "source": "repro scrub --fix of an older bundle",
                        "allow_list": policy.describe(), "variables": kept, "withheld": withheld}, indent=1)
            + "\n").encode()


def _default_out(path: Path) -> Path:
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar"):
        if name.endswith(suffix) and _is_tar(path):
            return path.with_name(name[: -len(suffix)] + "-scrubbed" + suffix)
    if path.is_file():
        return path.with_name(f"{path.stem}-scrubbed{path.suffix}")
    return path.with_name(f"{name}-scrubbed")


def _write_tar(dest: Path, t: _Tar, fixed: dict[str, bytes], shown: str) -> None:
    with tarfile.open(dest, "w:gz" if dest.name.endswith((".gz", ".tgz")) else "w") as tf:
        for m, data in t.members:
            body = fixed.get(f"{shown}!{m.name}", data)
            info = tarfile.TarInfo(m.name)
            info.size, info.mtime, info.mode = len(body), m.mtime, m.mode
            tf.addfile(info, io.BytesIO(body))


def _write_copy(path: Path, out: Path, src: _Source, fixed: dict[str, bytes]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".repro-scrub-", dir=out.parent))
    try:
        if _is_tar(path):
            _write_tar(tmp / out.name, src.tars[str(path)], fixed, str(path))
        elif path.is_file():
            (tmp / out.name).write_bytes(fixed[str(path)])
        else:
            root = tmp / out.name
            for m in src.members:
                if "!" in m.name and m.name.split("!", 1)[0] in src.tars:
                    continue
                dest = root / Path(m.name).relative_to(path)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(fixed[m.name])
            for shown, t in src.tars.items():
                dest = root / Path(shown).relative_to(path)
                dest.parent.mkdir(parents=True, exist_ok=True)
                _write_tar(dest, t, fixed, shown)
        os.replace(tmp / out.name, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@click.command("scrub")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--fix", is_flag=True, help="Write a redacted copy of PATH (to -o); PATH itself is never changed.")
@click.option("-o", "--out", "out", type=click.Path(path_type=Path), default=None, metavar="PATH",
              help="Where --fix writes the copy (a tarball for a tarball, a directory for a directory). "
                   "Default: beside PATH, named NAME-scrubbed.")
@click.option("--env-allow", multiple=True, metavar="NAME",
              help="With --fix, for an older bundle whose context/server-env.json lists every variable: also keep "
                   "NAME (repeatable, wildcards; REPRO_ENV_ALLOW too). Every other value is withheld.")
def command(path: Path, fix: bool, out: Path | None, env_allow: tuple[str, ...]) -> int:
    """Check a bundle (directory or .tar.gz), any directory or a file for secrets before you upload it.

    \b
    Reads every file (tarballs member by member) with the scanner capture uses:
    detect-secrets' detectors for the major services' token formats, private
    keys, basic-auth URLs, secret keywords and high-entropy strings, plus
    repro's own rules (--api-key and vLLM's echo of it, NAME=VALUE where the
    name says secret, bearer values, URL passwords). A value found in one
    file is looked for in all of them.

    \b
    Prints FILE:LINE:RULE for each finding (never the value) and
    FILE: not checked: WHY for a file it cannot read completely.
    Exit 0: clean. Exit 1: something found or not checked; with --fix,
    exit 0 once the written copy checks clean. Exit 2: bad PATH or -o.
    """
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    if out is not None and not fix:
        raise UsageError("-o/--out is where --fix writes its copy: add --fix")
    dest = (out or _default_out(path)) if fix else None
    if dest is not None:
        if dest.exists():
            raise UsageError(f"{dest} already exists: choose another -o")
        if not dest.parent.is_dir():
            raise UsageError(f"-o {dest}: the directory {dest.parent} does not exist")
    src = _read_source(path)
    redactor = Redactor()
    report = lastcheck.check(src.members, redactor)
    report.files += src.skipped
    for line in report.lines():
        click.echo(line)
    policy = EnvPolicy.from_settings(env_allow)
    old_env = {m.name: doc for m in src.members if (doc := _old_env(m.name, m.data)) is not None}
    for name in old_env:
        click.echo(f"note: {name} is from an older repro: it lists every variable with its value (only what the "
                   "scanner recognises is reported); --fix keeps the allow-list's and withholds the others", err=True)
    c = report.counts
    n_bad = sum(1 for f in report.files if f.findings or f.error)
    if report.clean:
        click.echo(f"{len(report.files)} file(s) checked: clean", err=True)
    else:
        click.echo(f"{sum(c.values())} finding(s), {len(report.unreadable)} file(s) not checked, in {n_bad} of "
                   f"{len(report.files)} file(s)" + (f" ({', '.join(f'{k} {v}' for k, v in sorted(c.items()))})"
                                                   if c else ""), err=True)
    if dest is None:
        return 0 if report.clean else EXIT_FOUND
    if report.unreadable:
        click.echo(f"not written: {report.unreadable[0].name}: {report.unreadable[0].error}", err=True)
        return EXIT_FOUND
    fixed = {f.name: f.fixed for f in report.files if f.fixed is not None}
    for name, doc in old_env.items():
        fixed[name] = _env_by_allow_list(json.loads(fixed[name]), policy)
    _write_copy(path, dest, src, fixed)
    again = lastcheck.check(_read_source(dest).members, Redactor())
    if not again.clean:
        for line in again.lines():
            click.echo(f"after --fix: {line}", err=True)
        click.echo(f"wrote {dest}, but it is still not clean", err=True)
        return EXIT_FOUND
    withheld = sum(len(EnvPolicy.apply(policy, d)[1]) for d in old_env.values())
    click.echo(f"wrote {dest}: {sum(c.values())} value(s) masked" + (f", {withheld} environment value(s) withheld"
                                                                       if withheld else "")
               + f"; checked again: clean ({WITHHELD} and [REDACTED] mark what was removed)", err=True)
    return 0
