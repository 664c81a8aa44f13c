"""vLLM's server log: the periodic stats line, fatal markers, and following a log as it grows.

The stats line (API server, every ``VLLM_LOG_STATS_INTERVAL`` s)::

    (APIServer pid=7) INFO 11-28 17:08:02 [loggers.py:335] Engine 000: Avg prompt throughput:
    1096.8 tokens/s, Avg generation throughput: 3385.2 tokens/s, Running: 31 reqs, Waiting: 0 reqs,
    GPU KV cache usage: 0.4%, Prefix cache hit rate: 0.0%

CPU builds say ``CPU KV cache usage``; optional fields (``Deferred``, ``Preemptions``,
``External prefix cache hit rate``) come and go between versions. After two all-zero
intervals vLLM logs the line at DEBUG only, so a hung engine prints one
``0.0 ... Running: N`` line and then nothing: silence is evidence (the detector uses it).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections import deque
from dataclasses import dataclass

_STATS = re.compile(r"Engine (?P<engine>\d+): (?P<fields>Avg prompt throughput:.*)$")
_FIELD = re.compile(r"(?P<key>[A-Za-z][A-Za-z ]*?):\s*(?P<val>-?\d+(?:\.\d+)?)\s*(?P<unit>tokens/s|reqs|%)?")
_KEYS = {
    "avg prompt throughput": "prompt_tps",
    "avg generation throughput": "generation_tps",
    "running": "running",
    "waiting": "waiting",
    "deferred": "deferred",
    "preemptions": "preemptions",
    "gpu kv cache usage": "kv_usage_pct",
    "cpu kv cache usage": "kv_usage_pct",
    "kv cache usage": "kv_usage_pct",
    "prefix cache hit rate": "prefix_hit_pct",
    "external prefix cache hit rate": "external_prefix_hit_pct",
}

# Lines that mean the engine is gone (or about to be), with the cause to name.
FATAL_MARKERS = (
    ("EngineDeadError", "EngineDeadError in the server log"),
    ("EngineCore encountered a fatal error", "EngineCore encountered a fatal error"),
    ("No space left on device", "storage full: No space left on device"),
)
WARNING_MARKERS = (
    ("No available shared memory broadcast block found", "a worker did not answer EngineCore (shm broadcast)"),
)


@dataclass(frozen=True)
class StatsLine:
    engine: int
    prompt_tps: float
    generation_tps: float
    running: int
    waiting: int
    kv_usage_pct: float | None = None
    deferred: int | None = None
    preemptions: int | None = None
    prefix_hit_pct: float | None = None

    @property
    def idle_throughput(self) -> bool:
        """Both throughputs read 0.0 (with running > 0: the last line a hung engine prints)."""
        return self.prompt_tps == 0.0 and self.generation_tps == 0.0


def parse_stats_line(line: str) -> StatsLine | None:
    """The stats fields of a log line, or None when it is not a stats line."""
    m = _STATS.search(line.rstrip())
    if not m:
        return None
    vals: dict[str, float] = {}
    for f in _FIELD.finditer(m.group("fields")):
        key = _KEYS.get(f.group("key").strip().lower())
        if key:
            vals[key] = float(f.group("val"))
    if not {"prompt_tps", "generation_tps", "running", "waiting"} <= vals.keys():
        return None

    def opt_int(k: str) -> int | None:
        return int(vals[k]) if k in vals else None

    return StatsLine(engine=int(m.group("engine")), prompt_tps=vals["prompt_tps"],
                     generation_tps=vals["generation_tps"], running=int(vals["running"]),
                     waiting=int(vals["waiting"]), kv_usage_pct=vals.get("kv_usage_pct"),
                     deferred=opt_int("deferred"), preemptions=opt_int("preemptions"),
                     prefix_hit_pct=vals.get("prefix_hit_pct"))


def fatal_marker(line: str) -> str | None:
    """The cause named by a fatal line (EngineDeadError, storage full, ...), else None."""
    for needle, cause in FATAL_MARKERS:
        if needle in line:
            return cause
    return None


def warning_marker(line: str) -> str | None:
    for needle, cause in WARNING_MARKERS:
        if needle in line:
            return cause
    return None


class LogFollower:
    """Follow a growing log file (like ``tail -F``): each ``read_lines()`` returns the new complete lines.

    Starts at the end of the file unless ``from_start``; survives truncation and
    replacement (rotation) by reopening. Reads at most ``max_bytes`` per call so a
    burst of logging cannot make one poll slow.
    """

    def __init__(self, path: str | os.PathLike[str], from_start: bool = False, max_bytes: int = 4 << 20) -> None:
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self._pos = 0
        self._ino: int | None = None
        self._partial = b""
        try:
            st = os.stat(self.path)
            self._ino = st.st_ino
            self._pos = 0 if from_start else st.st_size
        except FileNotFoundError:
            pass

    def read_lines(self) -> list[str]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        if self._ino is not None and st.st_ino != self._ino or st.st_size < self._pos:
            self._pos, self._partial = 0, b""  # rotated or truncated
        self._ino = st.st_ino
        if st.st_size == self._pos:
            return []
        with open(self.path, "rb") as f:
            f.seek(self._pos)
            data = f.read(self.max_bytes)
        self._pos += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > self.max_bytes:  # a runaway line without newline
            self._partial = b""
        return [ln.decode("utf-8", "replace") for ln in lines]

    def close(self) -> None:
        pass


class DockerLogFollower:
    """Follow ``docker logs -f NAME`` (stdout and stderr) from a reader thread into a bounded buffer."""

    def __init__(self, container: str, max_lines: int = 10000) -> None:
        self.container = container
        self._buf: deque[str] = deque(maxlen=max_lines)
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(["docker", "logs", "-f", "--tail", "0", container], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._pump, name="docker-logs", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._lock:
                self._buf.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def read_lines(self) -> list[str]:
        with self._lock:
            out = list(self._buf)
            self._buf.clear()
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
