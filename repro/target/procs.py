"""Find vLLM's processes by the titles vLLM gives them.

vLLM sets titles with setproctitle: ``VLLM::APIServer``, ``VLLM::EngineCore``
(``VLLM::EngineCore_DP<r>`` with data parallel), ``VLLM::Worker`` (``_TP<n>``,
``_PP<n>``, ``_DP<r>`` suffixes). ``/proc/PID/comm`` is cut to 15 characters
(``VLLM::EngineCor``), so titles are read from ``cmdline``. The launcher of a
server (``vllm serve ...``) keeps its own argv and is the API server when only
one API server runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
