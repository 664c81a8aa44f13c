"""py-spy's text dumps (``sample-K.native.txt``): threads, Python and native frames, and CUDA waits.

``py-spy dump --native`` prints, per thread, a header ``Thread 7855 (idle): "MainThread"`` and one
frame a line, innermost first: ``name (file.py:line)`` for Python, ``name (libfoo.so)`` or
``name (source.c:line)`` for native code, ``0x7f... (libc.so.6)`` for an unnamed address.

A **CUDA wait** is a thread whose innermost native frames (those above its innermost Python frame)
hold a host-side CUDA synchronization (``cuEventSynchronize``, ``cudaStreamSynchronize``,
``cudaDeviceSynchronize``, torch's ``THCPEvent_synchronize`` ...). The driver spin-waits by default,
so such a thread is ``R (running)``, burns a core and looks *active* to py-spy while it makes no
progress: only the native frames say it waits for the GPU. Without ``--native`` the Python stack
ends in torch's ``Event.synchronize`` / ``Stream.synchronize`` / ``torch.cuda.synchronize``.

A thread **stuck in the CUDA driver** counts as a CUDA wait too: its innermost frame is inside ``libcuda.so``
at the same named driver entry in every dump (``cuKernelSetAttribute``, ``cuLaunchKernel`` ...). A driver
call that does not return is what a hung GPU does to a thread that keeps launching work: on vLLM 0.26.0
with async scheduling (H200, bf16), EngineCore's main thread sat in ``cuKernelSetAttribute`` under
cuBLAS in all three dumps of a gpu-hang while the GPU stayed at 100%, with no ``*Synchronize`` frame.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_THREAD = re.compile(r'^Thread (?P<tid>0x[0-9A-Fa-f]+|\d+) \((?P<state>[^)]*)\)(?:: "(?P<name>.*)")?\s*$')
_PY_LOC = re.compile(r"^(?P<file>.*\.py|<[^>]+>):(?P<line>\d+)$")
# Host-side CUDA waits, driver and runtime API, and torch's bindings of them.
CUDA_WAIT = re.compile(r"^(cu|cuda)(Event|Stream|Ctx|Device|Thread)Synchronize(_v\d+|_ptsz)?$|"
                       r"^THCP(Event|Stream)_synchronize$|^(cuda|cu)StreamQuery$")
# torch's Python frames that wait for the GPU (the stack ends here without --native).
TORCH_SYNC = re.compile(r"(^|\.)(synchronize)$")
TORCH_SYNC_FILES = re.compile(r"torch/cuda/(streams|__init__)\.py$")
# Where the standard library lives in a dump that only shows short file names.
_STDLIB_SHORT = re.compile(r"^(threading|queue|selectors|socket|ssl|subprocess|contextlib)\.py$|"
                           r"^(multiprocessing|asyncio|concurrent)/")


@dataclass
class Frame:
    name: str
    location: str  # file.py, libfoo.so, source.c (as py-spy printed it)
    line: int | None
    python: bool

    def key(self) -> str:
        return f"{self.name} ({Path(self.location).name if self.python else self.location})"

    def text(self) -> str:
        return f"{self.name} ({self.location}{'' if self.line is None else f':{self.line}'})"


@dataclass
class DumpThread:
    tid: int
    name: str
    state: str  # idle | active | active+gil ...
    frames: list[Frame] = field(default_factory=list)  # innermost first

    def native_tip(self) -> list[Frame]:
        """The native frames above the innermost Python frame (what the thread is doing in C)."""
        out = []
        for f in self.frames:
            if f.python:
                break
            out.append(f)
        return out

    def python_frames(self) -> list[dict[str, Any]]:
        """The Python frames as py-spy's --json would give them (for analysis without a JSON dump)."""
        return [pyspy_frame(f) for f in self.frames if f.python]


def pyspy_frame(f: Frame) -> dict[str, Any]:
    loc = f.location
    full = f"/usr/lib/python3/{loc}" if _STDLIB_SHORT.search(loc) else f"/site-packages/{loc}"
    return {"name": f.name, "filename": full, "short_filename": loc, "module": None, "line": f.line}


def _tid(text: str) -> int:
    return int(text, 16) if text.startswith("0x") else int(text)


def parse_frame(line: str) -> Frame | None:
    s = line.strip()
    if not s.endswith(")") or " (" not in s:
        return None
    name, loc = s[:-1].rsplit(" (", 1)
    m = _PY_LOC.match(loc)
    if m:
        return Frame(name, m.group("file"), int(m.group("line")), True)
    src = re.match(r"^(?P<file>.*\.(?:c|cc|cpp|h|hpp|cu|rs)(?:\.h)?):(?P<line>\d+)$", loc)
    if src:
        return Frame(name, src.group("file"), int(src.group("line")), False)
    return Frame(name, loc, None, False)


def parse_dump(text: str) -> list[DumpThread]:
    """The threads of one `py-spy dump` text (with or without --native); unknown lines are skipped."""
    threads: list[DumpThread] = []
    cur: DumpThread | None = None
    for raw in text.splitlines():
        m = _THREAD.match(raw.strip())
        if m:
            cur = DumpThread(_tid(m.group("tid")), m.group("name") or "", m.group("state"))
            threads.append(cur)
            continue
        if cur is None or not raw.startswith("    ") or raw.startswith("        "):
            continue  # process header, or --locals detail
        f = parse_frame(raw)
        if f is not None:
            cur.frames.append(f)
    return threads


def cuda_wait_frame(thread: DumpThread) -> Frame | None:
    """The innermost CUDA wait among the thread's native tip, or None."""
    return next((f for f in thread.native_tip() if CUDA_WAIT.match(f.name)), None)


_DRIVER_LIB = re.compile(r"^libcuda\.so")


def driver_frame(thread: DumpThread) -> Frame | None:
    """When the thread's innermost frame is inside the CUDA driver (libcuda.so): its innermost *named* driver
    frame (the first libcuda frame if none is named), else None."""
    tip = thread.native_tip()
    if not tip or not _DRIVER_LIB.match(Path(tip[0].location).name):
        return None
    return next((f for f in tip if _DRIVER_LIB.match(Path(f.location).name) and not f.name.startswith("0x")), tip[0])


def is_torch_sync(frame: dict[str, Any]) -> bool:
    """A Python frame of torch that waits for the GPU (Event/Stream.synchronize, torch.cuda.synchronize)."""
    fn = frame.get("filename") or frame.get("short_filename") or ""
    return bool(TORCH_SYNC.search(frame.get("name") or "") and TORCH_SYNC_FILES.search(fn))


def load_dumps(proc_dir: Path) -> dict[int, list[DumpThread]]:
    """{sample index: threads} of every `sample-K.native.txt` in a process's stacks directory."""
    out = {}
    for p in proc_dir.glob("sample-*.native.txt"):
        k = re.sub(r"\D", "", p.name.split(".")[0])
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        threads = parse_dump(text)
        if threads:
            out[int(k or 0)] = threads
    return dict(sorted(out.items()))
