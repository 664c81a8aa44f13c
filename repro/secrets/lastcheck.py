"""The last check: read every file back, find secrets, mask them, say what was found (never the value).

Used twice: by the bundle writer after the bundle is written and before the ``.tar.gz`` is packed
(``BundleWriter.finish``), and by ``repro scrub`` on any bundle, directory or tarball. The same
:class:`~repro.secrets.redact.Redactor` rules run as when the bundle was written, plus every value
the writer already knew; a value found in one file is then looked for in every file (a secret seen
once is masked everywhere). A file that cannot be read completely — not UTF-8 text, a binary other
than a PNG whose text chunks can be read, a read error — is reported with the reason: the caller must
not call the set clean.

JSON files are also checked string by string after decoding, so a secret inside an escaped string
(``"note": "password = \\"x\\""``) is found; masking keeps them valid JSON.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from repro.secrets.redact import PROPAGATE_MIN, Redactor
from repro.secrets.secretscan import MASK, Finding, LineIndex, mask, resolve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Member:
    """One file to check: its name inside the set (a bundle-relative path) and its bytes."""

    name: str
    data: bytes


@dataclass
class FileReport:
    name: str
    findings: list[tuple[int, str]] = field(default_factory=list)  # (1-based line, rule), in text order
    fixed: bytes | None = None  # the masked content, when something was found and could be masked
    error: str | None = None  # why the file could not be checked completely (it is then not clean)


@dataclass
class CheckReport:
    files: list[FileReport]
    values: set[str] = field(default_factory=set, repr=False)  # what was found (kept in memory only, never written)

    @property
    def counts(self) -> Counter[str]:
        return Counter(rule for f in self.files for _, rule in f.findings)

    @property
    def unreadable(self) -> list[FileReport]:
        return [f for f in self.files if f.error]

    @property
    def clean(self) -> bool:
        return not self.unreadable and not any(f.findings for f in self.files)

    def lines(self, prefix: str = "") -> Iterator[str]:
        """`file:line:rule` for each finding, `file: not checked: why` for each unreadable file."""
        for f in self.files:
            for line, rule in f.findings:
                yield f"{prefix}{f.name}:{line}:{rule}"
            if f.error:
                yield f"{prefix}{f.name}: not checked: {f.error}"

    def to_dict(self) -> dict[str, Any]:
        c = self.counts
        return {"files": len(self.files), "bytes": sum(len(f.fixed or b"") for f in self.files),
                "masked": dict(sorted(c.items())), "total": sum(c.values()),
                "unreadable": [f"{f.name}: {f.error}" for f in self.unreadable]}


# -- reading ------------------------------------------------------------------------------------------------------
@dataclass
class _Text:
    member: Member
    text: str | None = None  # the whole file (None for a PNG: its chunks are in `png`)
    png: list[tuple[str, str]] = field(default_factory=list)  # (chunk keyword, text)
    error: str | None = None
    spans: list[Finding] = field(default_factory=list)


def _png_texts(data: bytes) -> list[tuple[str, str]]:
    """The text chunks of a PNG (tEXt, zTXt, iTXt): what a PNG can carry besides pixels. ValueError if damaged."""
    out: list[tuple[str, str]] = []
    i = len(PNG_MAGIC)
    while i < len(data):
        if i + 8 > len(data):
            raise ValueError("truncated PNG chunk header")
        length, kind = struct.unpack(">I4s", data[i:i + 8])
        body = data[i + 8:i + 8 + length]
        if len(body) != length:
            raise ValueError(f"truncated PNG chunk {kind!r}")
        if kind == b"tEXt":
            k, _, v = body.partition(b"\0")
            out.append((k.decode("latin-1"), v.decode("latin-1")))
        elif kind == b"zTXt":
            k, _, rest = body.partition(b"\0")
            out.append((k.decode("latin-1"), zlib.decompress(rest[1:]).decode("latin-1")))
        elif kind == b"iTXt":
            k, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _lang, _, rest = rest.partition(b"\0")
            _tk, _, text = rest.partition(b"\0")
            out.append((k.decode("latin-1"), (zlib.decompress(text) if compressed else text).decode("utf-8")))
        elif kind == b"IEND":
            break
        i += 12 + length
    return out


def _read(m: Member) -> _Text:
    if m.data.startswith(PNG_MAGIC):
        try:
            return _Text(m, png=_png_texts(m.data))
        except (ValueError, zlib.error, UnicodeDecodeError) as exc:
            return _Text(m, error=f"a damaged PNG ({exc})")
    try:
        text = m.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Text(m, error=f"not UTF-8 text (byte 0x{m.data[exc.start]:02x} at offset {exc.start}); "
                              "only text files and PNG images can be checked")
    if "\0" in text:
        return _Text(m, error="binary data (NUL bytes); only text files and PNG images can be checked")
    return _Text(m, text=text)


# -- finding ------------------------------------------------------------------------------------------------------
def _json_strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _json_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _json_strings(v)
    elif isinstance(value, str):
        yield value


def _escaped(value: str) -> str:
    return json.dumps(value)[1:-1]


def _json_docs(name: str, text: str) -> list[Any]:
    """The JSON documents of a .json (one) or .jsonl (one per line) file; [] when it is not JSON."""
    try:
        if name.endswith(".jsonl"):
            return [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        if name.endswith(".json"):
            return [json.loads(text)]
    except ValueError:
        return []
    return []


def _occurrences(text: str, values: Iterable[str], rule: str) -> list[Finding]:
    out: list[Finding] = []
    for v in values:
        i = text.find(v)
        while i >= 0:
            out.append(Finding(rule, i, i + len(v)))
            i = text.find(v, i + len(v))
    return out


def _find(t: _Text, r: Redactor) -> set[str]:
    """Fill t.spans from the redactor's rules; return the values found (for the other files)."""
    assert t.text is not None
    text = t.text
    spans = r.findings(text)
    # Strings that JSON escapes (quotes, backslashes, non-ASCII) are checked again as the writer saw them.
    found: list[str] = []
    for doc in _json_docs(t.member.name, text):
        for s in _json_strings(doc):
            if _escaped(s) != s:
                found += [s[f.start:f.end] for f in r.findings(s)]
    if found:
        spans = resolve([*spans, *_occurrences(text, {_escaped(v) for v in found}, "secret_in_json_string")])
    t.spans = spans
    return {text[f.start:f.end] for f in spans if f.end - f.start >= PROPAGATE_MIN} | \
        {v for v in found if len(v) >= PROPAGATE_MIN}


def _fix_json(name: str, original: str, fixed: str, values: set[str]) -> str:
    """A masked JSON file that no longer parses (a value cut an escape) is masked string by string instead."""
    docs = _json_docs(name, original)
    if not docs or _json_docs(name, fixed):
        return fixed

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {clean(k): clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        if isinstance(v, str):
            for s in sorted(values, key=len, reverse=True):
                v = v.replace(s, MASK)
            return v
        return v

    if name.endswith(".jsonl"):
        return "".join(json.dumps(clean(d)) + "\n" for d in docs)
    return json.dumps(clean(docs[0]), indent=1) + "\n"


def check(members: Iterable[Member], redactor: Redactor) -> CheckReport:
    """Find and mask secrets in every member; every value found is looked for in every member."""
    texts = [_read(m) for m in members]
    found: set[str] = set()
    for t in texts:
        if t.text is not None:
            found |= _find(t, redactor)
        for _k, v in t.png:
            fs = redactor.findings(v)
            if fs:
                t.error = "a secret in a PNG text chunk: it cannot be masked in place"
                t.spans = fs
    reports: list[FileReport] = []
    values: set[str] = set()
    for t in texts:
        rep = FileReport(t.member.name, error=t.error)
        if t.text is not None:
            text = t.text
            extra = _occurrences(text, found, "known_secret")
            extra += _occurrences(text, {_escaped(v) for v in found if _escaped(v) != v}, "known_secret")
            spans = resolve([*t.spans, *extra])
            values |= {text[f.start:f.end] for f in spans}
            if spans:
                idx = LineIndex(text)
                rep.findings = [(idx.line(f.start), f.rule) for f in spans]
                fixed = mask(text, spans)
                fixed = _fix_json(t.member.name, text, fixed, {text[f.start:f.end] for f in spans} | found)
                rep.fixed = fixed.encode("utf-8")
            else:
                rep.fixed = t.member.data
        elif t.png and t.spans:
            rep.findings = [(0, f.rule) for f in t.spans]
        else:
            rep.fixed = t.member.data if not t.error else None
        reports.append(rep)
    return CheckReport(reports, values)
