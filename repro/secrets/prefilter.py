"""Which lines of a text a regular expression can match at all, from the literals it requires.

A detector's pattern such as ``xox(?:a|b|p)-(?:\\d+-)+[a-z0-9]+`` can only match a line that holds one
of ``xoxa-``, ``xoxb-``, ``xoxp-``. :func:`required` reads those literal sets out of the compiled
pattern (the way RE2 and Hyperscan prefilter); :class:`Gate` finds the lines holding them with plain
substring search, so the (much slower) pattern runs on a few lines of a 4 MB log instead of all of
them. It never changes a result: a line it skips cannot match (the tests compare with and without).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

try:  # Python >= 3.11
    from re import _constants as sre_c, _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as sre_c  # type: ignore[no-redef]
    import sre_parse  # type: ignore[no-redef]

_MAX_SET = 64  # largest literal set tracked (a class like [0-9A-F] after a literal gives 16)
_MAX_CLASS = 16


@dataclass(frozen=True)
class _Info:
    lang: frozenset[str] | None  # every string the node can match, when few and finite
    factors: tuple[frozenset[str], ...]  # each: one of these strings is part of every match


_EMPTY = _Info(frozenset({""}), ())
_UNKNOWN = _Info(None, ())


def _class(items: Sequence[tuple[object, object]]) -> _Info:
    chars: set[str] = set()
    for op, av in items:
        if op is sre_c.LITERAL:
            chars.add(chr(av))  # type: ignore[arg-type]
        elif op is sre_c.RANGE:
            lo, hi = av  # type: ignore[misc]
            if hi - lo >= _MAX_CLASS:
                return _UNKNOWN
            chars.update(chr(c) for c in range(lo, hi + 1))
        elif op is sre_c.CATEGORY and av is sre_c.CATEGORY_DIGIT:
            chars.update("0123456789")
        else:  # NEGATE, other categories (\w, \s ...)
            return _UNKNOWN
        if len(chars) > _MAX_CLASS:
            return _UNKNOWN
    return _Info(frozenset(chars), ()) if chars else _UNKNOWN


def _seq(items: Iterable[tuple[object, object]]) -> _Info:
    cur: frozenset[str] = frozenset({""})
    whole = True  # every item so far had a finite language
    factors: list[frozenset[str]] = []

    def flush() -> None:
        if "" not in cur:
            factors.append(cur)

    for op, av in items:
        info = _node(op, av)
        if info.lang is not None and len(cur) * len(info.lang) <= _MAX_SET:
            cur = frozenset(a + b for a in cur for b in info.lang)
            continue
        flush()
        whole = False
        factors.extend(info.factors)
        cur = info.lang if info.lang is not None and len(info.lang) <= _MAX_SET else frozenset({""})
    if whole:
        return _Info(cur, (cur,) if "" not in cur else ())
    flush()
    return _Info(None, tuple(factors))


def _best(info: _Info) -> frozenset[str] | None:
    fs = [f for f in info.factors if f]
    if not fs:
        return None
    return max(fs, key=lambda f: (min(len(s) for s in f), -len(f)))


def _node(op: object, av: object) -> _Info:
    if op is sre_c.LITERAL:
        return _Info(frozenset({chr(av)}), ())  # type: ignore[arg-type]
    if op is sre_c.IN:
        return _class(av)  # type: ignore[arg-type]
    if op in (sre_c.AT, sre_c.ASSERT, sre_c.ASSERT_NOT):
        return _EMPTY  # zero width: the matched text is the same
    if op is sre_c.SUBPATTERN:
        return _seq(av[-1])  # type: ignore[index]
    if op is getattr(sre_c, "ATOMIC_GROUP", None):
        return _seq(av)  # type: ignore[arg-type]
    if op is sre_c.BRANCH:
        alts = [_seq(a) for a in av[1]]  # type: ignore[index]
        if all(a.lang is not None for a in alts):
            lang = frozenset().union(*(a.lang for a in alts if a.lang is not None))
            if len(lang) <= _MAX_SET:
                return _Info(lang, (lang,) if "" not in lang else ())
        best = [_best(a) for a in alts]
        if any(b is None for b in best):
            return _UNKNOWN
        union = frozenset().union(*(b for b in best if b is not None))
        return _Info(None, (union,))
    if op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, getattr(sre_c, "POSSESSIVE_REPEAT", None)):
        lo, hi, sub = av  # type: ignore[misc]
        if hi == 0:
            return _EMPTY
        info = _seq(sub)
        if info.lang is not None and hi <= 4 and len(info.lang) ** hi <= _MAX_SET:  # x?, x{2}, (ab|cd){1,2}
            lang, power = (frozenset({""}) if lo == 0 else frozenset()), frozenset({""})
            for k in range(1, hi + 1):
                power = frozenset(a + b for a in power for b in info.lang)
                if k >= lo:
                    lang |= power
            return _Info(lang, (lang,) if "" not in lang else ())
        if lo == 0:
            return _UNKNOWN
        factors = info.factors + ((info.lang,) if info.lang and "" not in info.lang else ())
        return _Info(None, factors)
    return _UNKNOWN  # ANY, NOT_LITERAL, GROUPREF, ...


def _minimal(f: frozenset[str]) -> frozenset[str]:
    """Drop members that contain another member: a line holding the longer one holds the shorter."""
    keep = sorted(f, key=len)
    out: list[str] = []
    for s in keep:
        if not any(o in s for o in out):
            out.append(s)
    return frozenset(out)


def _ignores_case(pattern: re.Pattern[str]) -> bool:
    return bool(pattern.flags & re.IGNORECASE) or "(?i" in pattern.pattern


def required(pattern: re.Pattern[str], factors: int = 2) -> tuple[frozenset[str], ...]:
    """Up to `factors` literal sets, each with one member in every match (lower case when the pattern ignores
    case); () when the pattern requires no literal of two characters or more."""
    info = _seq(sre_parse.parse(pattern.pattern, pattern.flags))
    fs = [f for f in info.factors if f and min(len(s) for s in f) >= 2]
    if _ignores_case(pattern):
        fs = [frozenset(s.lower() for s in f) for f in fs]
    fs = [_minimal(f) for f in fs]
    fs.sort(key=lambda f: (-min(len(s) for s in f), len(f)))
    return tuple(fs[:factors])


class Text:
    """One text with its line offsets and a lower-case copy, shared by every gate that looks at it."""

    def __init__(self, text: str) -> None:
        self.text = text
        low = text.lower()
        self.low = low if len(low) == len(text) else None  # a length-changing lower() would shift offsets
        self.nl = [m.start() for m in re.finditer("\n", text)]
        self._found: dict[tuple[str, bool], frozenset[int]] = {}  # literal -> its lines (gates share literals)

    def line_of(self, offset: int) -> int:
        return bisect.bisect_left(self.nl, offset)

    def span(self, line: int) -> tuple[int, int]:
        a = self.nl[line - 1] + 1 if line > 0 else 0
        b = self.nl[line] if line < len(self.nl) else len(self.text)
        return a, b

    def lines_with(self, literals: Iterable[str], lower: bool) -> set[int] | None:
        hay = self.low if lower else self.text
        if hay is None:
            return None
        out: set[int] = set()
        for lit in literals:
            key = (lit, lower)
            if key not in self._found:
                got: set[int] = set()
                i = hay.find(lit)
                while i >= 0:
                    ln = self.line_of(i)
                    got.add(ln)
                    i = hay.find(lit, self.span(ln)[1] + 1) if ln < len(self.nl) else -1
                self._found[key] = frozenset(got)
            out |= self._found[key]
        return out


class Gate:
    """The lines of a text where any of `patterns` could match (None: no literal to go by, every line)."""

    def __init__(self, patterns: Iterable[re.Pattern[str]]) -> None:
        self.parts = [(required(p), _ignores_case(p)) for p in patterns]
        self.open = any(not fs for fs, _ in self.parts)

    def lines(self, t: Text) -> list[int] | None:
        if self.open:
            return None
        out: set[int] = set()
        for factors, lower in self.parts:
            hit: set[int] | None = None
            for f in factors:
                lines = t.lines_with(f, lower)
                if lines is None:
                    return None
                hit = lines if hit is None else hit & lines
                if not hit:
                    break
            out |= hit or set()
        return sorted(out)
