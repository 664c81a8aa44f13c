"""A server death, read from its log: the fatal traceback, the exception and the frame that raised it.

vLLM's EngineCore logs ``EngineCore encountered a fatal error.`` with ``logger.exception`` when its busy
loop raises: the traceback follows, every line carrying the logger's header (vLLM's ``NewLineFormatter``
repeats it on each line) and the process prefix, e.g.::

    (EngineCore pid=7) ERROR 12-01 15:00:00 [core.py:1512] EngineCore encountered a fatal error.
    (EngineCore pid=7) ERROR 12-01 15:00:00 [core.py:1512] Traceback (most recent call last):
    (EngineCore pid=7) ERROR 12-01 15:00:00 [core.py:1512]   File ".../core.py", line 1505, in run_engine_core
    ...
    (EngineCore pid=7) ERROR 12-01 15:00:00 [core.py:1512] RuntimeError: boom

and the API server then raises ``EngineDeadError`` ("EngineCore encountered an issue. See stack trace
(above) for the root cause."). :func:`parse_fatal` finds that traceback (or, without the marker, the
last traceback of the log, EngineCore's first) and names the original exception (the first of a chain)
and its innermost frame.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FATAL_MARKERS = ("EngineCore encountered a fatal error", "EngineCore failed to start")
ENGINE_DEAD = "EngineDeadError"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_HEAD = re.compile(r"^(?:\((?P<proc>[A-Za-z][\w:]*) pid=(?P<pid>\d+)\)\s)?"
                   r"(?:(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+(?P<when>\d\d-\d\d \d\d:\d\d:\d\d)(?:\.\d+)?"
                   r"\s+\[[^\]]*\]\s?)?(?P<body>.*)$")
_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')
_EXC = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)(?::\s?(?P<msg>.*))?$")
_CHAIN = ("During handling of the above exception", "The above exception was the direct cause")
MAX_TRACEBACK_LINES = 400


@dataclass(frozen=True)
class Frame:
    file: str
    line: int
    function: str

    @property
    def short(self) -> str:
        """`function (file.py:123)`."""
        return f"{self.function} ({self.file.rsplit('/', 1)[-1]}:{self.line})"


@dataclass
class FatalError:
    exc_type: str  # the exception's class name, e.g. ReproInjectedEngineError
    exc_qualname: str  # as printed, e.g. repro.vllm_plugins.fault.ReproInjectedEngineError
    message: str
    frame: Frame | None  # the innermost frame of the original exception: where it was raised
    traceback: str  # the traceback as Python printed it (log headers removed)
    process: str | None = None  # EngineCore, APIServer, ... (from vLLM's log prefix)
    pid: int | None = None
    when: str | None = None  # the log's timestamp of the traceback (MM-DD HH:MM:SS, the server's clock)
    marker: str | None = None  # the `EngineCore encountered a fatal error.` line, when the log has it
    engine_dead_seen: bool = False  # the API server then raised EngineDeadError
    chained: list[str] = field(default_factory=list)  # later exceptions of the chain (qualnames)

    def to_dict(self) -> dict[str, object]:
        return {"exc_type": self.exc_type, "exc_qualname": self.exc_qualname, "message": self.message,
                "frame": None if self.frame is None else self.frame.short, "process": self.process, "pid": self.pid,
                "when": self.when, "marker": self.marker, "engine_dead_seen": self.engine_dead_seen}


@dataclass
class _Line:
    proc: str | None
    pid: int | None
    when: str | None
    body: str


def _lines(text: str) -> list[_Line]:
    out = []
    for raw in text.splitlines():
        m = _HEAD.match(_ANSI.sub("", raw.rstrip("\r")))
        assert m is not None  # the pattern matches any line
        out.append(_Line(m.group("proc"), int(m.group("pid")) if m.group("pid") else None, m.group("when"),
                         m.group("body")))
    return out


def _block(lines: list[_Line], start: int) -> tuple[int, list[str]]:
    """The traceback (with its chain) that begins at `start` ("Traceback ..."): (end index, its lines)."""
    who = (lines[start].proc, lines[start].pid)
    body: list[str] = []
    i, seen_exc = start, False
    while i < len(lines) and len(body) < MAX_TRACEBACK_LINES:
        ln = lines[i]
        if (ln.proc, ln.pid) != who and ln.proc is not None:
            i += 1  # another process's line interleaved: skip it
            continue
        b = ln.body
        if seen_exc:
            nxt = b.strip()
            if nxt and not nxt.startswith(_CHAIN) and not nxt.startswith("Traceback (most recent call last)"):
                break
        body.append(b)
        if b and not b[0].isspace() and not b.startswith(("Traceback (most recent call last)", *_CHAIN)):
            seen_exc = bool(_EXC.match(b.strip()))
        elif b.strip().startswith(_CHAIN) or b.startswith("Traceback"):
            seen_exc = False
        i += 1
    while body and not body[-1].strip():
        body.pop()
    return i, body


def _exceptions(body: list[str]) -> list[tuple[str, str, Frame | None]]:
    """Each exception of a chain, first (the original) first: (qualname, message, innermost frame)."""
    out, frame = [], None
    for i, b in enumerate(body):
        fm = _FRAME.match(b)
        if fm:
            frame = Frame(fm.group("file"), int(fm.group("line")), fm.group("func"))
            continue
        if b.startswith("Traceback"):
            frame = None
            continue
        if b and not b[0].isspace() and not b.startswith(_CHAIN):
            m = _EXC.match(b.strip())
            if m and (i == 0 or not body[i - 1].startswith(b)):
                out.append((m.group("name"), (m.group("msg") or "").strip(), frame))
                frame = None
    return out


def _continues_chain(lines: list[_Line], i: int) -> bool:
    """The traceback at `i` is the second part of a chain ("The above exception was the direct cause ...")."""
    j = i - 1
    while j >= 0 and not lines[j].body.strip():
        j -= 1
    return j >= 0 and lines[j].body.strip().startswith(_CHAIN)


def parse_fatal(text: str) -> FatalError | None:
    """The fatal error of a vLLM log, or None when the log shows no traceback."""
    lines = _lines(text)
    tb_starts = [i for i, ln in enumerate(lines) if ln.body.startswith("Traceback (most recent call last)")
                 and not _continues_chain(lines, i)]
    if not tb_starts:
        return None
    marker_i = max((i for i, ln in enumerate(lines) if any(m in ln.body for m in FATAL_MARKERS)), default=None)
    start = None
    if marker_i is not None:
        start = next((i for i in tb_starts if marker_i < i <= marker_i + 5), None)
    if start is None:  # no marker: the last traceback of an EngineCore, else the last one
        engine = [i for i in tb_starts if (lines[i].proc or "").startswith("EngineCore")]
        start = (engine or tb_starts)[-1]
    _, body = _block(lines, start)
    excs = _exceptions(body)
    if not excs:
        return None
    qual, msg, frame = excs[0]
    ln = lines[start]
    later = lines[start:]
    return FatalError(exc_type=qual.rsplit(".", 1)[-1], exc_qualname=qual, message=msg, frame=frame,
                      traceback="\n".join(body), process=(ln.proc or "").split("_")[0] or None, pid=ln.pid,
                      when=ln.when, marker=lines[marker_i].body.strip() if marker_i is not None else None,
                      engine_dead_seen=any(ENGINE_DEAD in x.body for x in later),
                      chained=[q for q, _, _ in excs[1:]])
