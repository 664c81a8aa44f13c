"""What repro can learn about a server it attached to (``--url``) and did not launch.

When the server runs on this machine, :func:`find_local_server` finds the process listening on the
URL's port and reads, while it is alive, what a report needs after a death: its command line
(``/proc/PID/cmdline``) and its log (its stdout/stderr when they go to a regular file, via
``/proc/PID/fd/1`` and ``/fd/2``). When they go to a pipe or a terminal, or the server is on
another machine, :class:`LocalServer` / :func:`remote_note` say which flag would have captured it.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from dataclasses import dataclass

LOG_FLAG_HELP = "pass the file vLLM's output goes to with --log-file FILE"


@dataclass(frozen=True)
class LocalServer:
    pid: int  # the process listening on the URL's port (vLLM's API server)
    command: list[str] | None  # its command line (the launcher's when the API server's title replaced it)
    log_path: str | None  # its stdout/stderr file, when that is a regular file
    log_note: str  # how the log was found, or why it was not and which flag would capture it

    def to_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "log_path": self.log_path, "note": self.log_note}


def url_is_local(url: str) -> bool:
    """The URL names this machine (loopback, or one of its own addresses or names)."""
    import socket

    import psutil

    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host in ("localhost", "::1", "0.0.0.0") or host.startswith("127."):
        return True
    own = {a.address.lower() for addrs in psutil.net_if_addrs().values() for a in addrs}
    return host in own or host in {socket.gethostname().lower(), socket.getfqdn().lower()}


def _fd_target(pid: int, fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None


def output_file(pid: int) -> tuple[str | None, str]:
    """(the regular file the process writes its stdout or stderr to, a note saying where they go)."""
    seen = []
    for fd, name in ((1, "stdout"), (2, "stderr")):  # vLLM logs to stdout; stderr holds tracebacks of dying processes
        target = _fd_target(pid, fd)
        if target is None:
            continue
        try:
            regular = stat.S_ISREG(os.stat(f"/proc/{pid}/fd/{fd}").st_mode)
        except OSError:
            regular = False
        if regular and not target.endswith(" (deleted)"):
            return target, f"the {name} of pid {pid} ({target})"
        seen.append(f"its {name} is {target}")
    where = "; ".join(seen) or f"its output could not be read (/proc/{pid}/fd)"
    return None, f"the server's log was not captured: {where}, not a file repro can read; {LOG_FLAG_HELP}"


def find_local_server(url: str) -> LocalServer | None:
    """The vLLM server behind `url` on this machine, or None when nothing here listens on its port."""
    from repro.server.procs import find_server_root, port_owner, proc_cmdline

    if not url_is_local(url):
        return None
    pid = port_owner(url)
    if pid is None:
        return None
    command = proc_cmdline(pid)
    if not command or command[0].startswith("VLLM::"):  # setproctitle replaced argv: the launcher has it
        try:
            command = proc_cmdline(find_server_root(pid)) or command
        except Exception:  # noqa: BLE001 - a process that just exited: keep what we read
            pass
    log, note = output_file(pid)
    return LocalServer(pid, command, log, note)


def remote_note(url: str) -> str:
    """The plain sentence for a server repro cannot see."""
    host = urllib.parse.urlsplit(url).hostname or url
    return (f"unknown: the server at {host} is not on this machine, so repro could not read its command line; "
            "pass it with --server-command 'vllm serve ...' (or run repro on the server's machine)")
