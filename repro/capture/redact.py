"""Redaction: secrets never reach a bundle file.

Every text the bundle writer puts on disk passes through one :class:`Redactor`
first. It removes secrets two ways:

* by variable name: an environment variable (or ``KEY=VALUE`` / ``"key": "value"``
  pair) whose name contains token, secret, key, password, passwd, auth,
  credential, cookie, session or private has its value replaced;
* by value, wherever it appears: Hugging Face tokens (``hf_...``), OpenAI-style
  keys (``sk-...``), ``Authorization: Bearer ...`` / ``Bearer ...``, the value
  after ``--api-key`` (and similar secret flags), credentials in URLs
  (``scheme://user:password@host``), PEM private keys, AWS access key ids and
  GitHub tokens.

With ``hosts=True`` hostnames and IP addresses are replaced by stable aliases
(``host-1``, ``ip-1``: the same input gives the same alias in every file of
one bundle); loopback stays readable.

:meth:`Redactor.report` says which rules fired and how many times, never the
values: that is what the manifest records.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

MASK = "[REDACTED]"

# A variable name that holds a secret. `key` alone matches (API_KEY, HF_KEY), but
# not names that only *contain* the letters by accident (e.g. KEYBOARD, MONKEY).
SECRET_NAME = re.compile(
    r"(?i)(token|secret|passw(or)?d|pwd|auth|credential|cookie|session|private|bearer|"
    r"(^|[_\-.])key($|[_\-.]|s$)|apikey|api_key|access_key)")
# ... except names about token *counts* or tokenizers, which are settings, not secrets.
NOT_SECRET_NAME = re.compile(
    r"(?i)(tokens($|[_\-.])|tokenizer|token_?ids?|num_?token|max_?token|token_?(count|len|budget|rate|usage)|"
    r"tokens_per|keyboard|author($|[_\-.])|keys?_?(count|len)|session_?(id|len)?$|new_session)")

# Names that look secret by the rule above but hold none (kept readable).
SAFE_NAMES = frozenset({
    "PWD", "OLDPWD",
    "TOKENIZERS_PARALLELISM", "VLLM_USE_V1", "HF_HUB_DISABLE_TELEMETRY", "KEYTIMEOUT",
    "SSH_AUTH_SOCK_PRESENT", "VLLM_MAX_TOKENS_PER_EXPERT_FP4_MOE",
})

_NOT_SEP = r"[^\s\"'<>,;)\]}]"  # a value char: stops at quotes and separators so JSON stays valid
_FRESH = r"(?!\[REDACTED)"  # a value not already masked (by an earlier rule or a known secret)

VALUE_RULES: list[tuple[str, re.Pattern[str], str]] = [
    ("pem_private_key",
     re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S),
     MASK),
    ("bearer", re.compile(r"(?i)\b(bearer)(\s+|%20)" + _FRESH + r"(" + _NOT_SEP + r"{4,})"), r"\1\2" + MASK),
    ("basic_auth", re.compile(r"(?i)\b(authorization:\s*basic)\s+(" + _NOT_SEP + r"{4,})"), r"\1 " + MASK),
    ("url_credentials", re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^\s/@:\"'<>]+):" + _FRESH +
                                   r"([^\s/@\"'<>]+)@"),
     r"\1\2:" + MASK + "@"),
    ("secret_flag", re.compile(
        r"(?i)(--(?:api[-_]key|token|hf[-_]token|password|secret|auth[-_]token|access[-_]token)"
        r"(?:=|\s+|\"\s*,\s*\"|'\s*,\s*'))" + _FRESH + r"(" + _NOT_SEP + r"+)"), r"\1" + MASK),
    ("hf_token", re.compile(r"\bhf_[A-Za-z0-9]{16,}\b"), MASK),
    ("openai_key", re.compile(r"\bsk-(?:proj-|ant-|live-)?[A-Za-z0-9_\-]{16,}"), MASK),
    ("github_token", re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}\b"), MASK),
    ("aws_access_key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), MASK),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\b"), MASK),
    # KEY=VALUE and "key": "value" where the name says secret (env dumps, logs, JSON, argv).
    ("named_assignment", re.compile(
        r"(?i)\b([A-Za-z_][A-Za-z0-9_\-.]*)([\"']?\s*[=:]\s*(?:\[\s*)?[\"']?)(" + _NOT_SEP + r"+)"), ""),
]

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


def _argv_roles(argv: Iterable[str]) -> list[tuple[str, str]]:
    """(arg, role) with role `value` (the argument after a secret flag), `flag=value`, `flag` or `plain`."""
    out: list[tuple[str, str]] = []
    for a in argv:
        if out and out[-1][1] == "flag":
            out.append((a, "value"))
            continue
        flag, eq, _ = a.partition("=")
        if flag.startswith("-") and secret_name(flag.lstrip("-")):
            out.append((a, "flag=value" if eq else "flag"))
        else:
            out.append((a, "plain"))
    return out


def argv_secrets(argv: Iterable[str]) -> list[str]:
    """The values of secret-named flags in a command line (`--api-key X`, `--hf-token=X`)."""
    vals = [a if role == "value" else a.partition("=")[2] for a, role in _argv_roles(argv)
            if role in ("value", "flag=value")]
    return [v for v in vals if len(v) >= 4]


def secret_name(name: str) -> bool:
    """True when a variable named `name` should have its value hidden."""
    return (name.upper() not in SAFE_NAMES and bool(SECRET_NAME.search(name))
            and not NOT_SECRET_NAME.search(name))


class Redactor:
    """Applies every rule; counts what it removed. One instance per bundle (so host aliases are consistent)."""

    def __init__(self, hosts: bool = False, extra_values: Iterable[str] = (), keep_hosts: Iterable[str] = ()) -> None:
        self.hosts = hosts
        self.counts: Counter[str] = Counter()
        self._aliases: dict[str, str] = {}
        self._keep_hosts = {h.lower() for h in keep_hosts} | _LOOPBACK
        # This machine's own names are hosts even without dots.
        self._own_names: list[str] = []
        if hosts:
            import socket

            self._own_names = sorted({n for n in (socket.gethostname(), socket.getfqdn())
                                      if n and n.lower() not in self._keep_hosts and len(n) >= 3},
                                     key=len, reverse=True)
        # Exact secrets known to the caller (e.g. the API key repro was given): removed wherever they appear.
        self._extra = sorted({v for v in extra_values if v and len(v) >= 4}, key=len, reverse=True)

    def add_known(self, values: Iterable[str]) -> None:
        """More exact secret values to remove wherever they appear (e.g. found in the server's environment)."""
        self._extra = sorted({*self._extra, *(v for v in values if v and len(v) >= 4)}, key=len, reverse=True)

    # -- text ------------------------------------------------------------------
    def text(self, s: str) -> str:
        for v in self._extra:
            if v in s:
                self.counts["known_secret"] += s.count(v)
                s = s.replace(v, MASK)
        for name, rx, repl in VALUE_RULES:
            if name == "named_assignment":
                s = rx.sub(self._named, s)
                continue
            s, n = rx.subn(repl, s)
            if n:
                self.counts[name] += n
        if self.hosts:
            s = self._map_hosts(s)
        return s

    def _named(self, m: re.Match[str]) -> str:
        name, sep, value = m.group(1), m.group(2), m.group(3)
        if value.startswith("[REDACTED") or not secret_name(name) or value.lower() in (
                "none", "null", "true", "false", "", "bearer", "basic", "0", "1"):
            return m.group(0)
        self.counts["secret_name"] += 1
        return f"{name}{sep}{MASK}"

    def _alias(self, value: str, kind: str) -> str:
        key = value.lower()
        if key not in self._aliases:
            n = sum(1 for a in self._aliases.values() if a.startswith(kind + "-")) + 1
            self._aliases[key] = f"{kind}-{n}"
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
        if isinstance(value, dict):
            return {k: self.obj(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            if value and all(isinstance(v, str) for v in value) and not (key and secret_name(key)):
                return self.argv(value)  # a command line: `--api-key`, `X` as two items
            return [self.obj(v, key) for v in value]
        if isinstance(value, str):
            if key is not None and value and secret_name(key) and not value.startswith("[REDACTED"):
                self.counts["secret_name"] += 1
                return MASK
            return self.text(value)
        return value

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """An environment with secret-named values masked and every value scanned."""
        out = {}
        for k, v in env.items():
            if secret_name(k) and v:
                self.counts["secret_name"] += 1
                out[k] = MASK
            else:
                out[k] = self.text(v)
        return out

    def argv(self, argv: Iterable[str]) -> list[str]:
        """A command line with secret flag values masked (both `--api-key X` and `--api-key=X`)."""
        out: list[str] = []
        for a, role in _argv_roles(argv):
            if role in ("value", "flag=value"):
                self.counts["secret_flag"] += 1
                out.append(MASK if role == "value" else f"{a.partition('=')[0]}={MASK}")
            else:
                out.append(a if role == "flag" else self.text(a))
        return out

    def report(self) -> dict[str, object]:
        """For the manifest: rule → count, and how many distinct hosts/IPs were aliased. Never values."""
        return {"rules": dict(sorted(self.counts.items())),
                "total": sum(v for k, v in self.counts.items() if not k.endswith("_mapped")),
                "hosts_mapped": self.hosts, "distinct_aliases": len(self._aliases)}

