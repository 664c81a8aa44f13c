"""Finding secrets in text: detect-secrets' detectors plus the few rules repro keeps for what they miss.

:class:`Scanner` answers one question for a text (a log, an env dump, a command line, a JSON file):
where are the secrets? It returns :class:`Finding` spans with the rule that found each; masking,
counting and propagation are the caller's (:mod:`repro.secrets.redact`, :mod:`repro.secrets.lastcheck`).

Three sources, in this order (a span found by an earlier one is attributed to it):

1. repro's own rules (:data:`REPRO_RULES`), for what the library does not cover: the value after a
   secret flag (``--api-key X``, vLLM's ``'api_key': ['X']`` echo), ``KEY=VALUE`` / ``"key": "value"``
   where the name says secret, ``Bearer``/``Basic`` header values, URL passwords, whole PEM/PuTTY
   private-key blocks (the library flags the BEGIN line only), Hugging Face tokens, ``sk-`` keys
   without OpenAI's marker and fine-grained GitHub tokens;
2. detect-secrets' format detectors (Yelp's plugins: AWS, Azure, Artifactory, Cloudant, Discord,
   GitHub, GitLab, IBM, JWT, Mailchimp, npm, OpenAI, PyPI, SendGrid, Slack, SoftLayer, Square,
   Stripe, Telegram, Twilio, basic-auth URLs, private keys) and its keyword detector;
3. detect-secrets' entropy detectors (base64 limit 4.5, hex limit 3.0, their own Shannon entropy)
   on unquoted candidates, tuned so that a bundle's evidence survives: a hex string of a digest's
   length (32/40/64/128: sha256 in the manifest, git and model-snapshot hashes, request UUIDs) or of
   at most 16 digits (py-spy addresses, signatures), a UUID, a file name (``<req_id>.safetensors``),
   a dotted or dashed id made of words, hex and digits (``cmpl-<hex>-0``), a path of words, and a
   candidate without both letters and digits are not secrets.

detect-secrets' public-IP detector is left out: hosts and addresses are ``--redact-hosts``'s job.
"""

from __future__ import annotations

import bisect
import re
import string
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from repro.secrets.prefilter import Gate, Text

MASK = "[REDACTED]"
PROPAGATE_MIN = 8  # a found value this long is specific enough to be masked wherever it appears
WITHHELD = "[WITHHELD]"
_MASKED = ("[REDACTED", "[WITHHELD")


@dataclass(frozen=True)
class Finding:
    """A secret at text[start:end], found by `rule` (never holds the value itself)."""

    rule: str
    start: int
    end: int


# -- repro's own rules --------------------------------------------------------------------------------------------
_NOT_SEP = r"[^\s\"'<>,;)\]}]"  # a value char: stops at quotes and separators so JSON stays valid

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
# Values that are settings whatever the name says (`--api-key none`, `"password": true`).
_PLAIN_VALUES = frozenset({"none", "null", "true", "false", "", "bearer", "basic", "0", "1", "yes", "no", "[]"})


def secret_name(name: str) -> bool:
    """True when a variable named `name` should have its value hidden."""
    return (name.upper() not in SAFE_NAMES and bool(SECRET_NAME.search(name))
            and not NOT_SECRET_NAME.search(name))


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    group: int  # the group holding the secret
    need_secret_name: int = 0  # when set: the group holding a variable name that must say "secret"


REPRO_RULES: tuple[Rule, ...] = (
    Rule("private_key", re.compile(
        r"-{4,5} ?BEGIN [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-{4,5}.*?(?:-{4,5} ?END [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-{4,5}|\Z)",
        re.S), 0),
    Rule("private_key", re.compile(r"PuTTY-User-Key-File-\d+:.*?(?:Private-MAC:[ \t]*\S+|\Z)", re.S), 0),
    Rule("bearer", re.compile(r"(?i)\b(bearer)(\s+|%20)(" + _NOT_SEP + r"{4,})"), 3),
    Rule("basic_auth", re.compile(r"(?i)\b(authorization:\s*basic)\s+(" + _NOT_SEP + r"{4,})"), 2),
    Rule("url_credentials", re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^\s/@:\"'<>]+):([^\s/@\"'<>]+)@"), 3),
    Rule("secret_flag", re.compile(
        r"(?i)(--(?:api[-_]key|token|hf[-_]token|password|secret|auth[-_]token|access[-_]token)"
        r"(?:=|\s+|\"\s*,\s*\"|'\s*,\s*'))(" + _NOT_SEP + r"+)"), 2),
    Rule("hf_token", re.compile(r"\bhf_[A-Za-z0-9]{16,}\b"), 0),
    Rule("openai_key", re.compile(r"\bsk-(?:proj-|ant-|live-)?[A-Za-z0-9_\-]{16,}"), 0),
    Rule("github_token", re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}\b"), 0),
    # KEY=VALUE and "key": "value" where the name says secret (env dumps, logs, JSON, argv, vLLM's args echo).
    Rule("secret_name", re.compile(
        r"(?i)\b([A-Za-z_][A-Za-z0-9_\-.]*)([\"']?\s*[=:]\s*(?:\[\s*)?[\"']?)(" + _NOT_SEP + r"+)"), 3,
         need_secret_name=1),
)


# Every secret name holds one of these (SECRET_NAME's words), and names are made of these characters.
_NAME_WORDS = ("token", "secret", "passw", "pwd", "auth", "credential", "cookie", "session", "private", "bearer", "key")
_NAME_CHARS = frozenset(string.ascii_lowercase + string.digits + "_-.")
_NAME_FIRST = frozenset(string.ascii_lowercase + "_")


_VERSION = re.compile(r"[=<>~!]*v?\d+(?:\.\d+)+(?:[+.\-_][A-Za-z0-9.]+)?")


def plain_value(value: str) -> bool:
    """A value that holds nothing to hide: a setting word, a number, an already masked value."""
    v = value.strip(" \t'\",;()]}\\")
    if v.lstrip("[").startswith(("REDACTED", "WITHHELD")):  # already masked (a rule may start inside "[REDACTED]")
        return True
    if not any(c.isalnum() for c in v):  # punctuation only: an escape or a separator, not a secret
        return True
    if _VERSION.fullmatch(v):  # `detect-secrets==1.5.0`, `tiktoken==0.14.0` in pip freeze: a version
        return True
    number = v.replace(".", "", 1).replace("-", "", 1).isdigit()
    return v.lower() in _PLAIN_VALUES or v.startswith(_MASKED) or (number and len(v) < PROPAGATE_MIN)


# -- detect-secrets -----------------------------------------------------------------------------------------------
_LEFT_OUT = frozenset({"IPPublicDetector",  # hosts: --redact-hosts
                       "Base64HighEntropyString", "HexHighEntropyString", "KeywordDetector"})  # used on their own
# Regex detectors whose matches include the delimiters around the secret (e.g. Artifactory's `(?:\s|=|:|"|^)`).
_DELIMS = " \t\r\n\"'=:"


def library_rule_name(secret_type: str) -> str:
    """'Slack Token' -> 'slack_token': the manifest's name for a detect-secrets detector."""
    return re.sub(r"[^a-z0-9]+", "_", secret_type.lower()).strip("_")


@lru_cache(maxsize=1)
def _library() -> dict[str, Any]:
    """detect-secrets' detectors, instantiated once (no network: their verify() is never called)."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.filters import heuristic
    from detect_secrets.plugins import keyword
    from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HexHighEntropyString

    classes = get_mapping_from_secret_type_to_class()
    fmt = sorted((cls() for cls in classes.values() if cls.__name__ not in _LEFT_OUT), key=lambda p: p.__class__.__name__)
    return {
        "formats": fmt,
        "keyword": keyword.KeywordDetector(),
        "keyword_sets": (keyword.QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP, keyword.CONFIG_DENYLIST_REGEX_TO_GROUP),
        "b64": Base64HighEntropyString(),  # limit 4.5
        "hex": HexHighEntropyString(),  # limit 3.0
        "heuristic": heuristic,
        "classes": {c.__name__ for c in classes.values()},
    }


def library_detectors() -> list[str]:
    """Class names of the detect-secrets detectors in use (every one the installed library has, but IPPublic)."""
    lib = _library()
    return sorted(c for c in lib["classes"] if c != "IPPublicDetector")


# -- entropy candidates -------------------------------------------------------------------------------------------
_RUN = re.compile(r"[A-Za-z0-9+/_\-]{20,}={0,2}")
_HEX = frozenset(string.hexdigits)
_DIGEST_LENGTHS = frozenset({32, 40, 64, 128})
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_EXT_AFTER = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,11}(?![A-Za-z0-9])")
_WORD = re.compile(r"[a-z][a-z_\-]{2,}|[A-Za-z][a-z]+(?:[A-Z][a-z]+)*")


def _is_hex(s: str) -> bool:
    return all(c in _HEX for c in s)


def _short_or_digest(s: str) -> bool:
    return len(s) <= 16 or len(s) in _DIGEST_LENGTHS


def _id_part(p: str) -> bool:
    """A part of a dashed/underscored id that is not random text: a word, digits, a short or digest-long hex."""
    return not p or p.isdigit() or p.isalpha() or (_is_hex(p) and _short_or_digest(p))


def _evidence(text: str, start: int, end: int) -> bool:
    """A candidate that is part of the evidence, not a secret (see the module docstring)."""
    s = text[start:end]
    if _EXT_AFTER.match(text, end):  # a file name: <req_id>.safetensors, <hash>.txt, model-00001.bin
        return True
    if _is_hex(s):
        return _short_or_digest(s)  # sha256, git/snapshot hashes, uuid4().hex, addresses, signatures
    parts = re.split(r"[-_]", s)
    return len(parts) > 1 and all(_id_part(p) for p in parts)  # cmpl-<hex>-0, ThreadPoolExecutor-4_0


def _pathlike(run: str) -> bool:
    parts = [p for p in run.split("/") if p]
    return run.startswith("/") or any(_WORD.fullmatch(p) for p in parts)


class Scanner:
    """Finds secrets in text. One instance can be shared (the detectors keep no state between calls).

    Every detector runs on the lines of the text that hold the literals its patterns require
    (:mod:`repro.secrets.prefilter`): the same findings as on every line, at a fraction of the cost.
    """

    def __init__(self, library: bool = True) -> None:
        self.library = library
        self._rule_gates = [Gate([r.pattern]) for r in REPRO_RULES]
        self._ready = threading.Lock()
        self._lib_state: dict[str, Any] | None = None

    def warm(self) -> threading.Thread | None:
        """Load detect-secrets in the background (importing it takes 1-3 s); find() waits for it."""
        if not self.library or self._lib_state is not None:
            return None
        th = threading.Thread(target=lambda: self._lib, name="repro-detect-secrets-import", daemon=True)
        th.start()
        return th

    @property
    def _lib(self) -> dict[str, Any] | None:
        if not self.library:
            return None
        if self._lib_state is None:
            with self._ready:
                if self._lib_state is None:
                    lib = dict(_library())
                    lib["plugin_gates"] = [Gate(p.denylist) for p in lib["formats"]]
                    lib["keyword_gate"] = Gate([rx for regs in lib["keyword_sets"] for rx in regs])
                    self._lib_state = lib
        return self._lib_state

    def find(self, text: str) -> list[Finding]:
        """Every secret span in `text`, earlier sources first (they win where spans overlap)."""
        t = Text(text)
        out: list[Finding] = []
        for rule, gate in zip(REPRO_RULES, self._rule_gates):
            out += self._rule(rule, gate, t)
        if self.library:
            out += self._formats(t)
            out += self._keywords(t)
            out += self._entropy(text)
        return out

    def _rule(self, rule: Rule, gate: Gate, t: Text) -> Iterator[Finding]:
        text = t.text
        if rule.need_secret_name and t.low is not None:
            yield from self._named(rule, t)
            return
        lines = gate.lines(t)
        if lines is not None and not lines:
            return
        if rule.pattern.flags & re.S or lines is None:
            regions = [(0, len(text))]  # a block rule (PEM) or no literal to go by: the whole text
        else:
            regions = [t.span(ln) for ln in lines]
        for a, b in regions:
            for m in rule.pattern.finditer(text, a, b):
                if rule.need_secret_name and not secret_name(m.group(rule.need_secret_name)):
                    continue
                if plain_value(m.group(rule.group)):
                    continue
                yield Finding(rule.name, m.start(rule.group), m.end(rule.group))

    def _named(self, rule: Rule, t: Text) -> Iterator[Finding]:
        """`NAME=VALUE` where the name says secret: tried only at the start of names that hold a secret word."""
        text, low = t.text, t.low
        assert low is not None
        starts: set[int] = set()
        for word in _NAME_WORDS:
            i = low.find(word)
            while i >= 0:
                a = i
                while a > 0 and low[a - 1] in _NAME_CHARS:
                    a -= 1
                while low[a] not in _NAME_FIRST:  # a name starts with a letter or "_" (`--api-key` -> `api-key`)
                    a += 1
                starts.add(a)
                i = low.find(word, i + len(word))
        end = -1
        for a in sorted(starts):
            if a < end:
                continue
            m = rule.pattern.match(text, a)
            if m is None or not secret_name(m.group(rule.need_secret_name)) or plain_value(m.group(rule.group)):
                continue
            end = m.end()
            yield Finding(rule.name, m.start(rule.group), m.end(rule.group))

    def _formats(self, t: Text) -> Iterator[Finding]:
        """detect-secrets' regex detectors, through their own analyze_string(), on the lines that can match.
        Each value one yields is masked wherever it occurs on that line."""
        assert self._lib is not None
        text = t.text
        for plugin, gate in zip(self._lib["formats"], self._lib["plugin_gates"]):
            rule = library_rule_name(plugin.secret_type)
            lines = gate.lines(t)
            regions = [(0, len(text))] if lines is None else [t.span(ln) for ln in lines]
            for a, b in regions:
                line = text[a:b]
                seen: set[str] = set()
                for value in plugin.analyze_string(line):
                    value = value.strip(_DELIMS) if isinstance(value, str) else ""
                    if len(value) < 4 or value in seen or plain_value(value):
                        continue
                    seen.add(value)
                    if rule == "private_key":  # it yields the marker ("BEGIN RSA PRIVATE KEY"): hide what follows
                        i = line.find(value)
                        if i >= 0:
                            yield Finding(rule, a + i, len(text))
                        continue
                    for f in _occurrences(line, value, rule):
                        yield Finding(rule, a + f.start, a + f.end)

    def _keywords(self, t: Text) -> Iterator[Finding]:
        """detect-secrets' keyword detector, line by line (quoted and unquoted assignment forms)."""
        assert self._lib is not None
        lib = self._lib
        heuristic = lib["heuristic"]
        lines = lib["keyword_gate"].lines(t)
        for a, b in ([(0, len(t.text))] if lines is None else [t.span(ln) for ln in lines]):
            for line_a, line in _split_lines(t.text, a, b):
                if heuristic.is_indirect_reference(line):
                    continue
                for regexes in lib["keyword_sets"]:
                    for value in lib["keyword"].analyze_string(line, denylist_regex_to_group=regexes):
                        if (not value or plain_value(value) or heuristic.is_templated_secret(value)
                                or heuristic.is_not_alphanumeric_string(value)):
                            continue
                        for f in _occurrences(line, value, "secret_keyword"):
                            yield Finding(f.rule, line_a + f.start, line_a + f.end)

    def _entropy(self, text: str) -> Iterator[Finding]:
        """detect-secrets' entropy detectors on unquoted runs of base64/hex characters, evidence excepted."""
        assert self._lib is not None
        for m in _RUN.finditer(text):
            run, base = m.group(0), m.start()
            pieces: list[tuple[int, int]] = []
            if "/" in run:
                i = 0
                for seg in run.split("/"):
                    pieces.append((base + i, base + i + len(seg)))
                    i += len(seg) + 1
                if not _pathlike(run):
                    pieces.insert(0, (base, base + len(run)))
            else:
                pieces.append((base, base + len(run)))
            for a, b in pieces:
                f = self._entropy_piece(text, a, b)
                if f is not None:
                    yield f
                    if (a, b) == (base, base + len(run)):
                        break  # the whole run is masked: its segments need no second look

    def _entropy_piece(self, text: str, a: int, b: int) -> Finding | None:
        assert self._lib is not None
        while a < b and text[a] in "-_=+":
            a += 1
        while b > a and text[b - 1] in "-_+":
            b -= 1
        s = text[a:b]
        if len(s) < 20 or _UUID.search(s):
            if len(s) >= 20 and _UUID.search(s):
                rest = [p for p in _UUID.split(s) if len(p.strip("-_")) >= 20]
                if rest:  # a secret glued to a UUID: look at the rest alone
                    i = s.find(rest[0])
                    return self._entropy_piece(text, a + i, a + i + len(rest[0]))
            return None
        if _evidence(text, a, b):
            return None
        heuristic = self._lib["heuristic"]
        if heuristic.is_sequential_string(s) or heuristic.is_templated_secret(s):
            return None
        if not (any(c.isdigit() for c in s) and any(c.isalpha() for c in s)):
            return None
        plugin = self._lib["hex"] if _is_hex(s) else self._lib["b64"]
        if plugin.calculate_shannon_entropy(s) <= plugin.entropy_limit:
            return None
        return Finding("hex_high_entropy_string" if plugin is self._lib["hex"] else "base64_high_entropy_string", a, b)


def _split_lines(text: str, a: int, b: int) -> Iterator[tuple[int, str]]:
    while a <= b:
        e = text.find("\n", a, b)
        e = b if e < 0 else e
        yield a, text[a:e]
        a = e + 1


def _occurrences(text: str, value: str, rule: str) -> Iterator[Finding]:
    i = text.find(value)
    while i >= 0:
        yield Finding(rule, i, i + len(value))
        i = text.find(value, i + len(value))


def resolve(findings: Iterable[Finding]) -> list[Finding]:
    """Non-overlapping spans in text order; where spans overlap they merge and the first-found rule names them."""
    items = list(findings)
    ranked = sorted(enumerate(items), key=lambda nf: (nf[1].start, nf[0]))
    out: list[tuple[Finding, int]] = []  # (merged finding, rank of the rule that names it)
    for n, f in ranked:
        if f.end <= f.start:
            continue
        if out and f.start < out[-1][0].end:
            prev, rank = out[-1]
            name, rank = (prev.rule, rank) if rank <= n else (f.rule, n)
            out[-1] = (Finding(name, prev.start, max(prev.end, f.end)), rank)
        else:
            out.append((f, n))
    return [f for f, _ in out]


def mask(text: str, spans: list[Finding], replacement: str | Callable[[Finding], str] = MASK) -> str:
    """`text` with each (resolved, non-overlapping) span replaced."""
    if not spans:
        return text
    parts: list[str] = []
    last = 0
    for f in spans:
        parts.append(text[last:f.start])
        parts.append(replacement(f) if callable(replacement) else replacement)
        last = f.end
    parts.append(text[last:])
    return "".join(parts)


class LineIndex:
    """Offset -> 1-based line number of one text."""

    def __init__(self, text: str) -> None:
        self._nl = [m.start() for m in re.finditer("\n", text)]

    def line(self, offset: int) -> int:
        return bisect.bisect_left(self._nl, offset) + 1
