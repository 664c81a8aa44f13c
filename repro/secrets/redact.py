"""Redaction: secrets never reach a bundle file.

Every text the bundle writer puts on disk passes through one :class:`Redactor` first. It masks
(``[REDACTED]``) what the :class:`~repro.secrets.secretscan.Scanner` finds — detect-secrets' detectors
for the major services' token formats, private keys, basic-auth URLs, secret keywords and
high-entropy strings, plus repro's own rules (secret flags such as ``--api-key`` and vLLM's echo of
them, ``NAME=VALUE`` where the name says secret, bearer values, URL passwords) — and, wherever they
appear, the exact values it already knows: the API key repro was given, secret-named or flagged
values of the server's environment and command line, and every value found so far (a secret seen once
is masked in every file of the bundle). The server's environment goes through
:class:`~repro.secrets.envpolicy.EnvPolicy`: variables off the allow-list are listed by name only.

With ``hosts=True`` hostnames and IP addresses are replaced by stable aliases
(``host-1``, ``ip-1``: the same input gives the same alias in every file of
one bundle); loopback stays readable.

:meth:`Redactor.report` says which rules fired and how many times, never the
values: that is what the manifest records.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping

from repro.secrets.envpolicy import EnvPolicy
from repro.secrets.secretscan import (MASK, PROPAGATE_MIN, WITHHELD, Finding, Scanner, mask, plain_value, resolve,
                                     secret_name)

__all__ = ["MASK", "WITHHELD", "Redactor", "argv_secrets", "secret_name"]

_IPV4 = re.compile(r"\b(?:25[0-5]|2[0-4]\d|1?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){3}\b")
# Fully qualified names only (at least two dots, alphabetic top label): `torch.version` is code, not a host.
_HOSTNAME = re.compile(r"\b[a-zA-Z0-9](?:[a-zA-Z0-9\-]{0,62})(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9\-]{0,62})){1,}"
                       r"\.(?:com|net|org|io|ai|dev|app|cloud|local|internal|lan|corp|home|cluster|edu|gov|int|biz|"
                       r"info|svc|(?!py\b|np\b|nn\b|fx\b|so\b|md\b|sh\b|cc\b|rs\b|pt\b|gz\b|js\b|ts\b)[a-z]{2})\b")
_LOOPBACK = {"127.0.0.1", "0.0.0.0", "localhost", "255.255.255.255"}
# Dotted words that are code, files or versions, not hosts.
_NOT_HOST_SUFFIX = re.compile(
    r"(?i)\.(py|pyc|so|json|jsonl|txt|md|log|csv|toml|yaml|yml|safetensors|lock|cpp|h|c|rs|sh|gz|tar|png|"
    r"html|js|whl|cfg|ini|pt|bin|env|d|conf|service|socket|target|[0-9]+)$")


_FLAG = re.compile(r"--?[A-Za-z][A-Za-z0-9_.\-]*")


def _argv_roles(argv: Iterable[str]) -> list[tuple[str, str]]:
    """(arg, role) with role `value` (the argument after a secret flag), `flag=value`, `flag` or `plain`."""
    out: list[tuple[str, str]] = []
    for a in argv:
        if out and out[-1][1] == "flag":
            out.append((a, "value"))
            continue
        flag, eq, _ = a.partition("=")
        if _FLAG.fullmatch(flag) and secret_name(flag.lstrip("-")):
            out.append((a, "flag=value" if eq else "flag"))
        else:
            out.append((a, "plain"))
    return out


def argv_secrets(argv: Iterable[str]) -> list[str]:
    """The values of secret-named flags in a command line (`--api-key X`, `--hf-token=X`)."""
    vals = [a if role == "value" else a.partition("=")[2] for a, role in _argv_roles(argv)
            if role in ("value", "flag=value")]
    return [v for v in vals if len(v) >= 4]


class Redactor:
    """Applies every rule; counts what it removed. One instance per bundle (so host aliases are consistent)."""

    def __init__(self, hosts: bool = False, extra_values: Iterable[str] = (), keep_hosts: Iterable[str] = (),
                 env_policy: EnvPolicy | None = None, scanner: Scanner | None = None) -> None:
        self.hosts = hosts
        self.env_policy = env_policy or EnvPolicy()
        self.scanner = scanner or Scanner()
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._aliases: dict[str, str] = {}
        self._keep_hosts = {h.lower() for h in keep_hosts} | _LOOPBACK
        # This machine's own names are hosts even without dots.
        self._own_names: list[str] = []
        if hosts:
            import socket

            self._own_names = sorted({n for n in (socket.gethostname(), socket.getfqdn())
                                      if n and n.lower() not in self._keep_hosts and len(n) >= 3},
                                     key=len, reverse=True)
        # Exact secrets: the caller's (e.g. the API key repro was given) and every value found so far.
        self._known: set[str] = set()
        self._known_rx: re.Pattern[str] | None = None
        self.add_known(extra_values)

    def add_known(self, values: Iterable[str]) -> None:
        """More exact secret values to remove wherever they appear (e.g. found in the server's environment)."""
        new = {v for v in values if v and len(v) >= 4 and not plain_value(v)} - self._known
        if new:
            with self._lock:
                self._known |= new
                self._known_rx = None

    @property
    def known(self) -> frozenset[str]:
        """The exact values masked everywhere (for the last check; never written anywhere)."""
        return frozenset(self._known)

    def known_findings(self, s: str) -> list[Finding]:
        """Where the known values occur in `s` (longest first)."""
        rx = self._known_rx
        if rx is None:
            with self._lock:
                vals = sorted(self._known, key=len, reverse=True)
                rx = self._known_rx = re.compile("|".join(map(re.escape, vals))) if vals else re.compile(r"(?!)")
        return [Finding("known_secret", m.start(), m.end()) for m in rx.finditer(s)] if self._known else []

    def findings(self, s: str) -> list[Finding]:
        """Known values first, then the scanner's rules; merged, in text order."""
        return resolve([*self.known_findings(s), *self.scanner.find(s)])

    # -- text ------------------------------------------------------------------
    def text(self, s: str) -> str:
        return self.texts([s])[0]

    def texts(self, items: list[str]) -> list[str]:
        """Many strings scanned as one text (one line each: the detectors' set-up cost is paid once, not per
        string); a span that crosses from one string into the next is masked in both."""
        if not items:
            return []
        joined = "\n".join(items)
        spans = self.findings(joined)
        if spans:
            self.add_known(joined[f.start:f.end] for f in spans
                           if f.rule != "known_secret" and f.end - f.start >= PROPAGATE_MIN)
            with self._lock:
                self.counts.update(f.rule for f in spans)
        out: list[str] = []
        pos, k = 0, 0
        for it in items:
            end = pos + len(it)
            while k < len(spans) and spans[k].end <= pos:
                k += 1
            mine = []
            j = k
            while j < len(spans) and spans[j].start < end:
                f = spans[j]
                mine.append(Finding(f.rule, max(f.start, pos) - pos, min(f.end, end) - pos))
                j += 1
            it = mask(it, [f for f in mine if f.end > f.start]) if mine else it
            out.append(self._map_hosts(it) if self.hosts else it)
            pos = end + 1
        return out

    def _alias(self, value: str, kind: str) -> str:
        key = value.lower()
        if key not in self._aliases:
            n = sum(1 for a in self._aliases.values() if a.startswith(kind + "-")) + 1
            self._aliases[key] = f"{kind}-{n}"
        with self._lock:
            self.counts[f"{kind}_mapped"] += 1
        return self._aliases[key]

    def _map_hosts(self, s: str) -> str:
        def ip(m: re.Match[str]) -> str:
            v = m.group(0)
            return v if v in self._keep_hosts or v.startswith("127.") else self._alias(v, "ip")

        def host(m: re.Match[str]) -> str:
            v = m.group(0)
            if v.lower() in self._keep_hosts or _NOT_HOST_SUFFIX.search(v):
                return v
            return self._alias(v, "host")

        s = _HOSTNAME.sub(host, _IPV4.sub(ip, s))
        for name in self._own_names:
            s = re.sub(r"(?<![A-Za-z0-9_\-.])" + re.escape(name) + r"(?![A-Za-z0-9_\-])",
                       lambda m: self._alias(m.group(0), "host"), s)
        return s

    # -- structures -------------------------------------------------------------
    def obj(self, value: object, key: str | None = None) -> object:
        """A JSON-like structure: strings under secret-named keys masked, every other string scanned.

        Numbers, booleans and null are left alone, so the result is still valid JSON of the same shape.
        """
        pending: list[str] = []
        shape = self._shape(value, key, pending)
        return _fill(shape, self.texts(pending))

    def _shape(self, value: object, key: str | None, pending: list[str]) -> object:
        """`value` with every string to scan replaced by a slot (its index in `pending`)."""
        if isinstance(value, dict):
            return {k: self._shape(v, str(k), pending) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            if value and all(isinstance(v, str) for v in value) and not (key and secret_name(key)):
                return self._argv_shape(value, pending)  # a command line: `--api-key`, `X` as two items
            return [self._shape(v, key, pending) for v in value]
        if isinstance(value, str):
            if key is not None and value and secret_name(key) and not plain_value(value):
                with self._lock:
                    self.counts["secret_name"] += 1
                return MASK
            pending.append(value)
            return _Slot(len(pending) - 1)
        return value

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """An environment by the allow-list: kept values scanned, every other value withheld (name kept)."""
        kept, withheld = self.env_policy.apply(env)
        out = {k: self.text(v) for k, v in kept.items()}
        out.update((k, WITHHELD) for k in withheld)
        with self._lock:
            self.counts["env_withheld"] += len(withheld)
        return dict(sorted(out.items()))

    def env_secrets(self, env: Mapping[str, str]) -> list[str]:
        """Values of `env` to mask wherever they appear: secret-named ones, and every secret the scanner finds in
        any value (kept or withheld: a withheld value can still be echoed by the server into its log)."""
        out = [v for k, v in env.items() if secret_name(k) and len(v) >= PROPAGATE_MIN and not v.startswith("/")]
        for v in env.values():
            out += [v[f.start:f.end] for f in self.scanner.find(v) if f.end - f.start >= PROPAGATE_MIN]
        return out

    def argv(self, argv: Iterable[str]) -> list[str]:
        """A command line with secret flag values masked (both `--api-key X` and `--api-key=X`)."""
        pending: list[str] = []
        shape = self._argv_shape(list(argv), pending)
        return _fill(shape, self.texts(pending))  # type: ignore[return-value]

    def _argv_shape(self, argv: Iterable[str], pending: list[str]) -> list[object]:
        out: list[object] = []
        for a, role in _argv_roles(argv):
            if role in ("value", "flag=value"):
                with self._lock:
                    self.counts["secret_flag"] += 1
                out.append(MASK if role == "value" else f"{a.partition('=')[0]}={MASK}")
            elif role == "flag":
                out.append(a)
            else:
                pending.append(a)
                out.append(_Slot(len(pending) - 1))
        return out

    def report(self) -> dict[str, object]:
        """For the manifest: rule → count, and how many distinct hosts/IPs were aliased. Never values."""
        return {"rules": dict(sorted(self.counts.items())),
                "total": sum(v for k, v in self.counts.items() if not k.endswith("_mapped") and k != "env_withheld"),
                "scanner": "detect-secrets + repro rules" if self.scanner.library else "repro rules only",
                "hosts_mapped": self.hosts, "distinct_aliases": len(self._aliases)}



class _Slot:
    """Where a scanned string goes back into a structure."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i


def _fill(shape: object, done: list[str]) -> object:
    if isinstance(shape, _Slot):
        return done[shape.i]
    if isinstance(shape, dict):
        return {k: _fill(v, done) for k, v in shape.items()}
    if isinstance(shape, list):
        return [_fill(v, done) for v in shape]
    return shape
