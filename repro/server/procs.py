"""Find vLLM's processes by the titles vLLM gives them.

vLLM sets titles with setproctitle: ``VLLM::APIServer``, ``VLLM::EngineCore``
(``VLLM::EngineCore_DP<r>`` with data parallel), ``VLLM::Worker`` (``_TP<n>``,
``_PP<n>``, ``_DP<r>`` suffixes). ``/proc/PID/comm`` is cut to 15 characters
(``VLLM::EngineCor``), so titles are read from ``cmdline``. The launcher of a
server (``vllm serve ...``) keeps its own argv and is the API server when only
one API server runs.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

ROLE_ORDER = {"engine_core": 0, "worker": 1, "api_server": 2, "launcher": 3, "other": 4}


@dataclass(frozen=True)
class VllmProcess:
    pid: int
    ppid: int
    role: str  # api_server | engine_core | worker | launcher | other
    title: str  # the full title (cmdline joined), e.g. "VLLM::EngineCore"

    @property
    def label(self) -> str:
        """A short, stable name for file names: EngineCore, Worker_TP0, APIServer, ..."""
        if self.title.startswith("VLLM::"):
            return self.title.split()[0][len("VLLM::"):].replace("/", "_") or self.role
        return {"launcher": "APIServer", "api_server": "APIServer"}.get(self.role, self.role)

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"label": self.label}


def classify(cmdline: list[str] | str) -> str:
    title = cmdline if isinstance(cmdline, str) else " ".join(cmdline)
    if title.startswith("VLLM::EngineCore"):
        return "engine_core"
    if title.startswith("VLLM::Worker"):
        return "worker"
    if title.startswith("VLLM::APIServer") or title.startswith("VLLM::API"):
        return "api_server"
    if "vllm" in title and (" serve" in title or "api_server" in title or "entrypoints" in title):
        return "launcher"
    return "other"


def _title(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline()).strip()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def describe(p: psutil.Process) -> VllmProcess | None:
    try:
        ppid = p.ppid()
        status = p.status()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    if status == psutil.STATUS_ZOMBIE:
        return None
    title = _title(p)
    return VllmProcess(p.pid, ppid, classify(title), title)


def find_vllm_processes(root_pid: int, include_other: bool = False) -> list[VllmProcess]:
    """The root process and its descendants that are vLLM's, EngineCore first.

    Raises psutil.NoSuchProcess when the root is gone.
    """
    root = psutil.Process(root_pid)
    out: list[VllmProcess] = []
    for p in [root, *root.children(recursive=True)]:
        vp = describe(p)
        if vp is None:
            continue
        if vp.role == "other" and p.pid == root_pid:
            vp = VllmProcess(vp.pid, vp.ppid, "launcher", vp.title)
        if vp.role != "other" or include_other:
            out.append(vp)
    # A launcher whose child is an APIServer is only the launcher; alone it serves the API itself.
    if not any(v.role == "api_server" for v in out):
        out = [VllmProcess(v.pid, v.ppid, "api_server", v.title) if v.role == "launcher" else v for v in out]
    return sorted(out, key=lambda v: (ROLE_ORDER.get(v.role, 9), v.pid))


def find_all_vllm_processes() -> list[VllmProcess]:
    """Every vLLM process on this machine (for `repro capture` without a pid)."""
    out = []
    for p in psutil.process_iter():
        vp = describe(p)
        if vp is not None and vp.role in ("api_server", "engine_core", "worker"):
            out.append(vp)
    return sorted(out, key=lambda v: (ROLE_ORDER.get(v.role, 9), v.pid))


def find_server_root(pid: int) -> int:
    """Walk up from any vLLM process to the top-most vLLM ancestor (the server's root)."""
    p = psutil.Process(pid)
    top = p
    while True:
        try:
            parent = top.parent()
        except psutil.NoSuchProcess:
            break
        if parent is None or classify(_title(parent)) == "other":
            break
        top = parent
    return top.pid


def proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def proc_exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def server_python(root_pid: int | None, server_command: list[str] | None, fs_root: str = "") -> str | None:
    """The Python interpreter the server runs on.

    argv[0] first (a venv's `bin/python` keeps the venv; /proc/PID/exe resolves the symlink to the base
    interpreter and loses it), then the shebang of a script in argv[0] (`vllm serve`), then /proc/PID/exe.
    ``fs_root``: the server's filesystem as seen from here (``/proc/PID/root`` for a container's process): paths
    are checked below it and returned as the server sees them.
    """
    def runnable(path: str) -> bool:
        # Below fs_root an absolute symlink (a venv's python -> /usr/bin/python3) would resolve on this host's
        # filesystem: the link itself is what tells that the path is there.
        return os.path.lexists(fs_root + path) if fs_root else os.access(path, os.X_OK)

    cmd = server_command or (proc_cmdline(root_pid) if root_pid else None) or []
    if cmd:
        first = cmd[0]
        if "python" in Path(first).name and runnable(first):
            return first
        script = (shutil.which(first) if not fs_root else None) if os.sep not in first else first
        try:
            with open(fs_root + (script or "") if script else "", "rb") as f:
                head = f.readline(256).decode("utf-8", "replace")
            if head.startswith("#!") and "python" in head:
                interp = head[2:].strip().split()[0]
                if runnable(interp):
                    return interp
        except OSError:
            pass
    exe = proc_exe(root_pid) if root_pid else None
    if exe and "python" in Path(exe).name and runnable(exe):
        return exe
    return None


def port_owner(url: str) -> int | None:
    """The pid listening on the URL's port on this machine, if any."""
    from urllib.parse import urlparse

    try:
        port = urlparse(url).port or (443 if url.startswith("https") else 80)
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return c.pid
    except (psutil.AccessDenied, ValueError, OSError):
        return None
    return None
