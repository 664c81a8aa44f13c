"""The search space: a concurrency range plus a set of *changes* from a plain vLLM server.

A configuration is ``(concurrency, changes)``. The baseline (the field setup that
hangs) is the top of the concurrency range with every change applied; the
search looks for the fewest changes, then the lowest concurrency, that still hang.

Changes (``NAME`` or ``NAME=VALUE``), each a difference from a plain server and
a plain client:

=====================  =============================================  ==================
change                 what it does                                    plain (without it)
=====================  =============================================  ==================
extract=N              hidden-state extraction of N layers             no extraction, chat
storage=PATH           hidden-state files written to PATH              the plain storage
storage=P1,P2,...,PN   a ladder of storage paths, plainest first:      the plain storage
                       the baseline uses PN; once storage matters,
                       the search takes the plainest Pi that hangs
async-scheduling=on|off  force vLLM's async scheduling                 vLLM's default
chunked-prefill=on|off   force chunked prefill                         vLLM's default
prefix-caching=on|off    force prefix caching                          vLLM's default
max-num-seqs=N         vLLM --max-num-seqs N                           vLLM's default
timeout=SECONDS        client request timeout                          1 hour
retries=N              client retries after a timeout or error         0
consume=POLICY         keep | move:DIR (what the client does with files) delete
arg=FLAG[ VALUE]       a passthrough flag for `vllm serve`             absent
=====================  =============================================  ==================

The space comes from flags (``--concurrency 1-32 --change extract=4 ...``) or a
TOML file::

    concurrency = [1, 32]          # or "1-32"
    plain_storage = "/dev/shm/repro-bisect"
    changes = ["extract=4", "storage=/mnt/nfs/hs", "timeout=120", "retries=3"]
    max_trial = "2h"               # longest single trial (duration budget per trial)
    budget = "48h"                 # total wall-clock budget of the search
"""

from __future__ import annotations

import copy
import hashlib
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro.errors import UsageError
from repro.scenario import Scenario, load_toml
from repro.units import parse_duration

TOGGLES = ("extract", "storage", "async-scheduling", "chunked-prefill", "prefix-caching", "max-num-seqs",
           "timeout", "retries", "consume", "arg")
CLIENT_TOGGLES = ("timeout", "retries", "consume")  # client settings: a trial with another value keeps its server
_ONOFF = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
PLAIN_TIMEOUT = 3600.0
DEFAULT_PLAIN_STORAGE = "/dev/shm/repro-bisect-hs"


@dataclass(frozen=True, order=True)
class Change:
    """One difference from the plain server/client, e.g. ``storage=/mnt/nfs``."""

    name: str
    value: str = ""

    def __str__(self) -> str:
        return f"{self.name}={self.value}" if self.value else self.name

    @classmethod
    def parse(cls, text: str) -> "Change":
        raw = text.strip()
        name, eq, value = raw.partition("=")
        name = name.strip().lower().replace("_", "-")
        value = value.strip()
        if name not in TOGGLES:
            raise UsageError(f"unknown toggle {name!r} in {raw!r}: use one of {', '.join(TOGGLES)}")
        if name in ("async-scheduling", "chunked-prefill", "prefix-caching"):
            if value.lower() not in _ONOFF:
                raise UsageError(f"toggle {raw!r}: the value must be on or off")
            value = "on" if _ONOFF[value.lower()] else "off"
        elif name in ("extract", "max-num-seqs", "retries"):
            if not value.isdigit() or (name != "retries" and int(value) < 1):
                raise UsageError(f"toggle {raw!r}: the value must be a whole number"
                                 + (" >= 1" if name != "retries" else ""))
        elif name == "timeout":
            value = f"{parse_duration(value, 'toggle timeout'):g}" if value else ""
            if not value or float(value) <= 0:
                raise UsageError(f"toggle {raw!r}: give the client timeout, e.g. timeout=120")
        elif name == "consume":
            if value not in ("keep",) and not value.startswith("move:"):
                raise UsageError(f"toggle {raw!r}: use consume=keep or consume=move:DIR (delete is the plain client)")
        elif name in ("storage", "arg") and not value:
            raise UsageError(f"toggle {raw!r} needs a value ({name}=...)")
        return cls(name, value)


@dataclass(frozen=True)
class Config:
    concurrency: int
    changes: frozenset[Change]

    def key(self) -> str:
        return f"c={self.concurrency};" + ";".join(sorted(str(c) for c in self.changes))

    def describe(self) -> str:
        ch = ", ".join(sorted(str(c) for c in self.changes)) or "plain server"
        return f"concurrency {self.concurrency}, {ch}"

    def to_dict(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "changes": sorted(str(c) for c in self.changes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        return cls(int(d["concurrency"]), frozenset(Change.parse(c) for c in d["changes"]))


@dataclass
class SearchSpace:
    lo: int
    hi: int
    changes: tuple[Change, ...] = ()
    plain_storage: str = DEFAULT_PLAIN_STORAGE
    max_trial: float | None = None  # seconds; None: sized from the posterior only
    budget: float | None = None  # seconds of wall time
    step: int = 1
    storage_ladder: tuple[str, ...] = ()  # storage paths between the plain one and the baseline's, plainest first

    def __post_init__(self) -> None:
        self.changes = tuple(self._split_storage_ladder(c) for c in self.changes)
        if self.lo < 1:
            raise UsageError(f"concurrency range {self.lo}-{self.hi}: the low end must be at least 1")
        if self.hi < self.lo:
            raise UsageError(f"concurrency range {self.lo}-{self.hi} is inverted: write LOW-HIGH, e.g. 1-32")
        if self.step < 1:
            raise UsageError("concurrency step must be at least 1")
        names = [c.name for c in self.changes if c.name not in ("arg",)]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UsageError(f"toggle {dup[0]!r} given twice: each toggle may appear once")
        if len(set(self.changes)) != len(self.changes):
            raise UsageError("the same change is given twice")
        if self.storage_ladder and self.storage_change is None:
            raise UsageError("storage alternatives need a storage change (storage=P1,...,PN)")
        rungs = self.storage_rungs
        if len(set(rungs)) != len(rungs) or self.plain_storage in rungs:
            raise UsageError(f"storage ladder {','.join(rungs)}: each path may appear once, and not the plain "
                             f"storage ({self.plain_storage})")

    def _split_storage_ladder(self, c: Change) -> Change:
        if c.name != "storage" or "," not in c.value:
            return c
        parts = [p.strip() for p in c.value.split(",")]
        if any(not p for p in parts):
            raise UsageError(f"toggle {c}: an empty path in the storage ladder (write storage=P1,P2,...)")
        if self.storage_ladder:
            raise UsageError("the storage ladder is given twice")
        self.storage_ladder = tuple(parts[:-1])
        return Change("storage", parts[-1])

    @property
    def storage_change(self) -> Change | None:
        return next((c for c in self.changes if c.name == "storage"), None)

    @property
    def storage_rungs(self) -> tuple[str, ...]:
        """Every storage path a trial may use besides the plain one, plainest first (the baseline's last)."""
        c = self.storage_change
        return (*self.storage_ladder, c.value) if c is not None else ()

    @property
    def values(self) -> list[int]:
        vals = list(range(self.lo, self.hi + 1, self.step))
        if vals[-1] != self.hi:
            vals.append(self.hi)
        return vals

    @property
    def baseline(self) -> Config:
        return Config(self.hi, frozenset(self.changes))

    @property
    def minimum(self) -> Config:
        """The smallest configuration of the space: the lowest concurrency on a plain server."""
        return Config(self.lo, frozenset())

    def identity(self) -> str:
        """A fingerprint of the search (a journal from another search has another one)."""
        d = {"lo": self.lo, "hi": self.hi, "step": self.step, "changes": sorted(str(c) for c in self.changes),
             "plain_storage": self.plain_storage}
        if self.storage_ladder:
            d["storage_ladder"] = list(self.storage_ladder)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"concurrency": [self.lo, self.hi], "step": self.step, "changes": [str(c) for c in self.changes],
                "plain_storage": self.plain_storage, "storage_ladder": list(self.storage_ladder),
                "max_trial": self.max_trial, "budget": self.budget}


def parse_range(text: str | list[int] | tuple[int, ...] | int) -> tuple[int, int]:
    if isinstance(text, int):
        return text, text
    if isinstance(text, (list, tuple)):
        if len(text) != 2:
            raise UsageError(f"concurrency range {text!r}: give [LOW, HIGH]")
        lo, hi = text
    else:
        s = str(text).strip()
        if not s:
            raise UsageError("empty concurrency range: write LOW-HIGH, e.g. 1-32")
        lo_s, sep, hi_s = s.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise UsageError(f"concurrency range {s!r}: write LOW-HIGH with whole numbers, e.g. 1-32") from None
    try:
        return int(lo), int(hi)
    except (TypeError, ValueError):
        raise UsageError(f"concurrency range {text!r}: write LOW-HIGH with whole numbers") from None


def space_from_toml(path: str | Path) -> SearchSpace:
    d = load_toml(path)
    d = d.get("space", d)
    known = {"concurrency", "changes", "plain_storage", "storage", "max_trial", "budget", "step"}
    unknown = set(d) - known - {"hazard", "sim"}
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    if "concurrency" not in d:
        raise UsageError(f"{path}: missing 'concurrency' (e.g. concurrency = [1, 32])")
    lo, hi = parse_range(d["concurrency"])
    changes = list(d.get("changes", []))
    if "storage" in d:  # storage = ["/dev/shm/hs", "/data/hs", "/mnt/nfs/hs"]: a ladder, plainest first
        paths = d["storage"] if isinstance(d["storage"], list) else [d["storage"]]
        if not paths or not all(isinstance(p, str) for p in paths):
            raise UsageError(f"{path}: storage must be a path or a list of paths, plainest first")
        if any(str(c).startswith("storage") for c in changes):
            raise UsageError(f"{path}: give storage either as 'storage = [...]' or as a change, not both")
        changes.append("storage=" + ",".join(paths))
    return SearchSpace(
        lo, hi, tuple(Change.parse(c) for c in changes),
        plain_storage=d.get("plain_storage", DEFAULT_PLAIN_STORAGE),
        max_trial=parse_duration(d["max_trial"], "max_trial") if "max_trial" in d else None,
        budget=parse_duration(d["budget"], "budget") if "budget" in d else None,
        step=int(d.get("step", 1)),
    )


def apply(base: Scenario, space: SearchSpace, config: Config, num_layers: int | None = None) -> Scenario:
    """The scenario of one trial: `base` made plain, then the config's changes applied.

    `num_layers` is the model's layer count (to turn ``extract=N`` into layer ids);
    None leaves vLLM's default layer choice (speculators' four).
    """
    s = copy.deepcopy(base)
    srv, load = s.server, s.load
    # plain server and client
    srv.extract = False
    srv.layers = None
    srv.storage = space.plain_storage
    srv.async_scheduling = srv.chunked_prefill = srv.prefix_caching = None
    srv.max_num_seqs = None
    srv.extra_args = list(srv.extra_args)
    load.workload = "chat"
    load.request_timeout = PLAIN_TIMEOUT
    load.retries = 0
    load.consume = "delete"
    load.concurrency = config.concurrency
    for ch in sorted(config.changes):
        v = ch.value
        if ch.name == "extract":
            srv.extract = True
            load.workload = "hidden-states"
            srv.layers = layers_for(int(v), num_layers) if num_layers else None
        elif ch.name == "storage":
            srv.storage = v
        elif ch.name in ("async-scheduling", "chunked-prefill", "prefix-caching"):
            setattr(srv, {"async-scheduling": "async_scheduling", "chunked-prefill": "chunked_prefill",
                          "prefix-caching": "prefix_caching"}[ch.name], v == "on")
        elif ch.name == "max-num-seqs":
            srv.max_num_seqs = int(v)
        elif ch.name == "timeout":
            load.request_timeout = float(v)
        elif ch.name == "retries":
            load.retries = int(v)
        elif ch.name == "consume":
            load.consume = v
        elif ch.name == "arg":
            srv.extra_args.extend(shlex.split(v))
    return s


def layers_for(n_extract: int, num_layers: int) -> list[int]:
    """N layers spread like speculators' choice: the default set, trimmed or padded from the top."""
    from repro.server.launcher import default_layers

    base = default_layers(num_layers)
    if n_extract <= len(base):
        return base[-n_extract:] if n_extract < len(base) else base
    extra = [i for i in range(num_layers, 0, -1) if i not in base]
    return sorted(base + extra[: n_extract - len(base)])


@dataclass
class SpaceArgs:
    """What the CLI collected (flags), before it becomes a SearchSpace."""

    concurrency: str | None = None
    changes: list[str] = field(default_factory=list)
    plain_storage: str | None = None
    max_trial: str | None = None
    budget: str | None = None
