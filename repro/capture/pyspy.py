"""py-spy under a hard timeout: `--json` for structure, `--native` text for humans, `--nonblocking` as fallback.

py-spy pauses the target while it reads and has been seen to hang, so every call
runs in its own process group and is killed (the whole group) on expiry. A
blocking dump that fails or times out is retried once with ``--nonblocking``
(which cannot be combined with ``--native``). Failures are classified so the
bundle can say what to do: py-spy missing, ptrace refused, process gone,
timed out.

A process in a container, seen from its host (another pid and mount namespace), is
dumped by the host's py-spy *inside* the container's namespaces: ``nsenter --target
HOSTPID --pid --mount`` runs the host's binary (handed over as an open file
descriptor, since the container's filesystem does not have it) with the pid the
container knows. Run from the host directly, py-spy reads the Python stacks but its
``--native`` fails for every process (it unwinds threads by the tids the container's
Python records, which name other threads, or none, on the host); inside the
namespaces the tids, ``/proc`` and the libraries it opens are the container's own, and
native frames come out. Root on the host needs no capability in the container for this.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro.capture import procfs
from repro.errors import PTRACE_HELP

PYSPY_MISSING_HELP = """\
py-spy was not found, so no stacks could be taken. Install it next to repro
(pip install py-spy) or pass its path with --py-spy PATH. In Docker, use an
image that carries py-spy or run repro on the host as root (it reads the
container's processes by their host pids).
"""

PTRACE_MARKERS = ("permission denied", "operation not permitted", "os error 13", "os error 1)", "ptrace")
GONE_MARKERS = ("no such process", "os error 3)", "failed to find process", "no such file or directory",
                "check that the process is running")


@dataclass
class CallResult:
    """One py-spy invocation, as the manifest records it."""

    command: list[str]
    exit_code: int | None
    duration: float
    timed_out: bool
    stdout: str = ""
    stderr: str = ""
    error: str | None = None  # None: it worked
    kind: str | None = None  # missing | ptrace | gone | timeout | failed | None
    mode: str = ""  # json | native | json-nonblocking

    def record(self) -> dict[str, Any]:
        return {"command": self.command, "exit_code": self.exit_code, "duration": round(self.duration, 3),
                "timed_out": self.timed_out, "error": self.error, "error_kind": self.kind, "mode": self.mode}


def find_pyspy(explicit: str | None = None) -> str | None:
    """The py-spy to use: explicit path, else the one beside this Python, else PATH."""
    if explicit:
        p = shutil.which(explicit) if os.sep not in explicit else explicit
        return p if p and os.access(p, os.X_OK) else None
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def ptrace_scope() -> str:
    try:
        return Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip()
    except OSError:
        return "not set (no Yama LSM on this kernel)"


def suspend_refused(res: "CallResult") -> bool:
    """py-spy could read the process but not pause it (ptrace itself refused, e.g. by a seccomp profile that
    keeps ptrace behind CAP_SYS_PTRACE while /proc/PID/mem stays readable): --nonblocking needs no pause."""
    return "failed to suspend process" in (res.stderr + res.stdout).lower()


def classify_failure(exit_code: int | None, stderr: str) -> str:
    low = stderr.lower()
    if any(m in low for m in GONE_MARKERS):
        return "gone"
    if any(m in low for m in PTRACE_MARKERS):
        return "ptrace"
    return "failed"


def run_with_timeout(cmd: list[str], timeout: float, env: dict[str, str] | None = None,
                     pass_fds: tuple[int, ...] = ()) -> tuple[int | None, str, str, float, bool]:
    """Run cmd in its own process group; on expiry SIGKILL the group. Returns (rc, out, err, seconds, timed_out)."""
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, pass_fds=pass_fds)
    except FileNotFoundError as exc:
        return None, "", f"{cmd[0]}: not found ({exc.strerror})", time.monotonic() - t0, False
    except PermissionError as exc:
        return None, "", f"{cmd[0]}: cannot execute ({exc.strerror})", time.monotonic() - t0, False
    try:
        out, err = proc.communicate(timeout=max(0.1, timeout))
        return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), \
            time.monotonic() - t0, False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            out, err = b"", b""
        return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), \
            time.monotonic() - t0, True


NSENTER_FD = "/proc/self/fd/{fd}"


def can_enter_namespaces() -> bool:
    """nsenter is there and this process may use it (root: setns into another mount namespace needs it)."""
    return os.geteuid() == 0 and shutil.which("nsenter") is not None


@dataclass
class PySpy:
    """How to invoke py-spy: on the host (`exe`), inside a container's namespaces (`enter_namespaces`, the
    host's binary run by nsenter for a process of another pid namespace), or through `docker exec CONTAINER
    py-spy` (the image's own)."""

    exe: str | None
    docker: str | None = None  # container name: run the image's own py-spy with `docker exec`
    docker_exe: str = "py-spy"
    extra_env: dict[str, str] = field(default_factory=dict)
    enter_namespaces: bool = False  # a pid of another pid namespace is dumped by nsenter (see the module doc)

    def command(self, pid: int, *flags: str) -> list[str]:
        """The command line as recorded (the nsenter form names the host's py-spy, not its descriptor)."""
        if self.docker:
            return ["docker", "exec", self.docker, self.docker_exe, "dump", "--pid", str(pid), *flags]
        assert self.exe is not None
        ns = self._namespace_pid(pid)
        if ns is not None:
            return ["nsenter", "--target", str(pid), "--pid", "--mount", "--", self.exe, "dump", "--pid", str(ns),
                    *flags]
        return [self.exe, "dump", "--pid", str(pid), *flags]

    def in_namespaces(self, pid: int) -> bool:
        """True when `pid` is dumped inside its container's namespaces (the nsenter form)."""
        return self.exe is not None and self._namespace_pid(pid) is not None

    def _namespace_pid(self, pid: int) -> int | None:
        """The pid to give py-spy inside the target's namespaces, or None to run it here."""
        if not self.enter_namespaces or self.docker or not procfs.in_other_pid_namespace(pid):
            return None
        return procfs.nspid(pid)

    @property
    def available(self) -> bool:
        return self.docker is not None or self.exe is not None

    def _run(self, cmd: list[str], timeout: float) -> tuple[int | None, str, str, float, bool]:
        if cmd[0] != "nsenter":
            return run_with_timeout(cmd, timeout)
        # The container's filesystem has no py-spy: the host's binary goes in as an open descriptor.
        exe_at = cmd.index("--") + 1
        try:
            fd = os.open(cmd[exe_at], os.O_RDONLY)
        except OSError as exc:
            return None, "", f"{cmd[exe_at]}: cannot open ({exc.strerror})", 0.0, False
        try:
            return run_with_timeout([*cmd[:exe_at], NSENTER_FD.format(fd=fd), *cmd[exe_at + 1:]], timeout,
                                    pass_fds=(fd,))
        finally:
            os.close(fd)

    def _call(self, pid: int, flags: list[str], timeout: float, mode: str) -> CallResult:
        cmd = self.command(pid, *flags)
        rc, out, err, dt, timed_out = self._run(cmd, timeout)
        res = CallResult(cmd, rc, dt, timed_out, out, err, mode=mode)
        if rc is None and not timed_out:
            res.kind, res.error = "missing", err.strip()
        elif timed_out:
            res.kind, res.error = "timeout", f"py-spy did not answer within {timeout:.1f} s and was killed"
        elif rc != 0:
            res.kind = classify_failure(rc, err + out)
            res.error = _first_line(err) or _first_line(out) or f"exit code {rc}"
        return res

    def dump_json(self, pid: int, timeout: float) -> tuple[list[dict[str, Any]] | None, list[CallResult]]:
        """Blocking JSON dump, falling back to --nonblocking; returns (threads or None, the calls made)."""
        calls = []
        for flags, mode in ((["--json"], "json"), (["--json", "--nonblocking"], "json-nonblocking")):
            res = self._call(pid, flags, timeout, mode)
            calls.append(res)
            if res.error is None:
                try:
                    data = json.loads(res.stdout)
                except ValueError as exc:
                    res.kind, res.error = "failed", f"py-spy printed output that is not JSON ({exc})"
                else:
                    return _strip(data), calls
            if res.kind in ("missing", "gone") or (res.kind == "ptrace" and not suspend_refused(res)):
                break  # a non-blocking retry cannot help
        return None, calls

    def dump_native(self, pid: int, timeout: float) -> CallResult:
        return self._call(pid, ["--native"], timeout, "native")


def _first_line(text: str) -> str:
    """py-spy prints the error first, then `Caused by:` and a backtrace: keep the error."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:500]
    return ""


def _strip(data: Any) -> list[dict[str, Any]]:
    """Keep what analysis needs; drop locals (they may hold prompts or secrets) and null process_info."""
    out = []
    for t in data if isinstance(data, list) else []:
        frames = [{"name": f.get("name"), "filename": f.get("filename"), "short_filename": f.get("short_filename"),
                   "module": f.get("module"), "line": f.get("line")} for f in t.get("frames") or []]
        out.append({"thread_id": t.get("thread_id"), "os_thread_id": t.get("os_thread_id"),
                    "thread_name": t.get("thread_name"), "active": t.get("active"), "owns_gil": t.get("owns_gil"),
                    "frames": frames})
    return out


def ptrace_help() -> str:
    return PTRACE_HELP.format(scope=ptrace_scope())
