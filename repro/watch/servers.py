"""What the watchdog watches, and how it stops and starts it.

Three kinds, one interface (:class:`Target`):

``ServeTarget``     ``--serve``: repro launches vLLM in its own process group
                    (:class:`~repro.server.launcher.VllmServer`) and stops that group only.
``DockerTarget``    ``--docker NAME``: follows ``docker logs``; stops with ``docker stop NAME`` and
                    starts with ``docker start NAME`` (a ``docker restart`` split in two, so
                    that the port can be confirmed free in between), or runs ``--restart-cmd``.
``ExternalTarget``  ``--url URL [--pid PID] --restart-cmd CMD``: anything else (systemd, k8s...).

Nothing here ever finds a process by name: stopping is by process group (one repro
started) or by container, and the processes a capture looks at are the descendants of the
server's root. Input is checked before anything is touched (:meth:`Target.check`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import psutil

from repro.capture import gpu as gpu_memory
from repro.errors import ServerStartError, TargetError, UsageError
from repro.monitor.logs import DockerLogFollower, LogFollower
from repro.scenario import ServerSettings
from repro.server import procs
from repro.server.launcher import VllmServer, build_launch, http_get, port_free
from repro.watch.observe import LineSource

RELEASE_POLL = 0.5
STOP_GRACE = 5.0  # SIGTERM -> SIGKILL for a stalled server: a stuck engine rarely cleans up on SIGTERM
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::")


def url_host_port(url: str) -> tuple[str, int]:
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UsageError(f"--url {url}: use http://HOST:PORT")
    return u.hostname, u.port or (443 if u.scheme == "https" else 80)


def model_answers(url: str, timeout: float = 5.0, api_key: str | None = None) -> str | None:
    """The served model's name when /health and /v1/models answer 200, else None."""
    try:
        status, _ = http_get(url + "/health", timeout=timeout, api_key=api_key)
        if status != 200:
            return None
        status, body = http_get(url + "/v1/models", timeout=timeout, api_key=api_key)
        if status != 200:
            return None
        data = json.loads(body).get("data") or [{}]
        return str(data[0].get("id") or "")
    except (OSError, ValueError):
        return None


def wait_port_free(host: str, port: int, timeout: float) -> float:
    """Seconds until nothing listens on host:port; TargetError after `timeout`."""
    t0 = time.monotonic()
    bind_host = "127.0.0.1" if host in ("localhost", "0.0.0.0") else ("::1" if host == "::" else host)
    while not port_free(bind_host, port):
        if time.monotonic() - t0 > timeout:
            raise TargetError(f"port {port} on {host} is still in use {timeout:.0f} s after the server was stopped: "
                              f"not starting a second server on it",
                              help=f"Find what holds it with `ss -ltnp 'sport = :{port}'`.")
        time.sleep(RELEASE_POLL)
    return time.monotonic() - t0


def gpu_pids() -> set[int] | None:
    """Pids holding GPU memory per nvidia-smi; None when there is no nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        r = subprocess.run([exe, "--query-compute-apps=pid", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=20)
    except (subprocess.TimeoutExpired, OSError):
        return None
    if r.returncode != 0:
        return None
    return {int(x) for x in r.stdout.split() if x.strip().isdigit()}


def wait_gpu_released(pids: set[int], timeout: float, held_before: float | None = None,
                      used_before: list[float | None] | None = None) -> dict[str, Any]:
    """Wait until no stopped pid holds GPU memory; say how much they held (`held_before`, MiB, read before the
    stop) and what each GPU uses now, so that the event shows the memory came back. Where nvidia-smi lists none
    of the pids (a container without the host's pid namespace), wait instead (15 s at most) for the GPUs' memory
    in use to fall below `used_before`."""
    held = gpu_pids()
    if held is None:
        return {"status": "skipped", "why": "no nvidia-smi"}
    t0 = time.monotonic()
    while held & pids:
        if time.monotonic() - t0 > timeout:
            raise TargetError(f"GPU memory is still held by stopped server process(es) {sorted(held & pids)} "
                              f"{timeout:.0f} s after the stop: not starting again",
                              help="Check `nvidia-smi`; a zombie holding GPU memory needs the host's attention.")
        time.sleep(RELEASE_POLL)
        held = gpu_pids() or set()
    after = gpu_memory.memory_of(pids)
    if not held_before and used_before and after is not None:
        before_total = sum(x or 0.0 for x in used_before)
        limit = time.monotonic() + min(timeout, 15.0)
        while sum(x or 0.0 for x in after["memory_used_mib"]) > before_total - 256 and time.monotonic() < limit:
            time.sleep(RELEASE_POLL)
            after = gpu_memory.memory_of(pids) or after
    out: dict[str, Any] = {"status": "released", "seconds": round(time.monotonic() - t0, 3)}
    if held_before is not None:
        out["held_mib_before"] = held_before
    if after is not None:
        out["held_mib_after"] = after["held_mib"]
        out["memory_used_mib_after"] = after["memory_used_mib"]
    return out


def gpu_held(pids: set[int]) -> dict[str, Any]:
    """For a stop record: the GPU memory `pids` hold now (MiB), when nvidia-smi can say."""
    m = gpu_memory.memory_of(pids)
    if m is None:
        return {}
    # per GPU as well: where nvidia-smi cannot see the pids (some containers), the drop in use still shows
    return {"gpu_held_mib": m["held_mib"], "gpu_held_by": m["held_by"], "gpu_memory_used_mib": m["memory_used_mib"]}


def wait_ready(url: str, timeout: float, alive: Any = None, api_key: str | None = None) -> str:
    """Block until the model answers; ServerStartError when `alive()` says the server is gone or on timeout."""
    t0 = time.monotonic()
    while True:
        name = model_answers(url, timeout=5.0, api_key=api_key)
        if name is not None:
            return name
        if alive is not None and alive() is False:
            raise ServerStartError(f"the server at {url} is not running (it exited while starting)")
        if time.monotonic() - t0 > timeout:
            raise ServerStartError(f"the server at {url} did not answer within {timeout:.0f} s of the restart")
        time.sleep(1.0)


def run_restart_cmd(cmd: str, timeout: float) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise TargetError(f"the restart command did not finish within {timeout:.0f} s: {cmd}") from None
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
        raise TargetError(f"the restart command failed (exit {r.returncode}): {cmd}" + (f": {tail[0]}" if tail[0] else ""))
    return {"method": "restart-cmd", "command": cmd, "seconds": round(time.monotonic() - t0, 3)}


def check_restart_cmd(cmd: str) -> None:
    try:
        words = shlex.split(cmd)
    except ValueError as exc:
        raise UsageError(f"--restart-cmd {cmd!r}: {exc}") from None
    if not words:
        raise UsageError("--restart-cmd is empty")
    first = words[0]
    if "=" in first or first in ("cd", "exec", "env", "sudo") or any(c in cmd for c in "|;&"):
        return  # a shell construct: it can only be judged by running it
    if shutil.which(first) is None and not os.access(first, os.X_OK):
        raise UsageError(f"--restart-cmd: {first!r} is not a command found on PATH")


def group_pids(pgid: int) -> set[int]:
    """Every live process of a process group (an orphaned EngineCore included), zombies excepted."""
    out = set()
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.add(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return out


def tree_pids(root: int | None) -> set[int]:
    if root is None:
        return set()
    try:
        p = psutil.Process(root)
        return {root, *(c.pid for c in p.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


class Target:
    """The interface the supervisor drives."""

    kind = "target"
    url: str
    restarts_itself = False  # the stop step already starts the server again (a restart command)

    def check(self) -> None:
        """Validate the input before anything is touched (raise UsageError / TargetError)."""

    def launch(self) -> dict[str, Any]:
        raise NotImplementedError

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        raise NotImplementedError

    def stop(self) -> dict[str, Any]:
        raise NotImplementedError

    def released(self, stopped: dict[str, Any], timeout: float) -> list[tuple[str, dict[str, Any]]]:
        """After stop: confirm the port (and GPU memory) are free; raise TargetError when they are not."""
        return []

    def alive(self) -> bool | None:
        return None

    def root_pid(self) -> int | None:
        return None

    def log_source(self) -> LineSource | None:
        return None

    def log_mark(self) -> int:
        """Where the log of the server being watched begins (bytes into --log-file; 0 for a log of its own)."""
        path = self.capture_fields().get("log_path")
        try:
            return os.path.getsize(path) if path else 0
        except OSError:
            return 0

    def log_tail(self, since: int = 0, max_bytes: int = 2_000_000) -> str:
        """The last `max_bytes` of the log written since `since` ('' when there is no log to read)."""
        path = self.capture_fields().get("log_path")
        if not path:
            return ""
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, since if since <= size else 0, size - max_bytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def capture_fields(self) -> dict[str, Any]:
        return {}

    def shutdown(self) -> None:
        """The watchdog exits: stop what it owns (nothing, unless it launched the server)."""

    @property
    def model(self) -> str | None:
        return getattr(self, "_model", None)


class ServeTarget(Target):
    kind = "serve"

    def __init__(self, settings: ServerSettings, run_dir: Path | None) -> None:
        self.settings = settings
        self.run_dir = Path(run_dir) if run_dir is not None else None  # set before the first launch
        self.server: VllmServer | None = None
        self.starts = 0
        self._model: str | None = None

    @property
    def url(self) -> str:  # type: ignore[override]
        return VllmServer(self.settings, Path(".")).url

    def check(self) -> None:
        """The launch line must build (model, layers, storage) and the port must be free."""
        s = self.settings
        build_launch(s, self.run_dir or Path("."))
        if not port_free(s.host, s.port):
            raise UsageError(f"port {s.port} on {s.host} is already in use: pick another with --port, or watch "
                             f"that server with --url {self.url} --restart-cmd CMD")

    def launch(self) -> dict[str, Any]:
        assert self.run_dir is not None
        self.starts += 1
        self.server = VllmServer(self.settings, self.run_dir, log_name=f"server-{self.starts:03d}.log")
        self.server.start()
        return {"pid": self.server.pid, "pgid": self.server.pid, "log": str(self.server.log_path),
                "attempt": self.starts}

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        assert self.server is not None
        self.server.wait_ready(timeout=timeout)
        self._model = self.server.model_name
        assert self.server.started_at is not None and self.server.ready_at is not None
        return {"model": self._model, "seconds": round(self.server.ready_at - self.server.started_at, 3),
                "processes": [p.to_dict() for p in self.server.processes()]}

    def stop(self) -> dict[str, Any]:
        if self.server is None:
            return {"method": "process-group", "pids": []}
        pgid = self.server.pid
        pids = sorted(group_pids(pgid) | tree_pids(pgid))
        held = gpu_held(set(pids))
        t0 = time.monotonic()
        stragglers = self.server.stop(grace=STOP_GRACE)
        still = sorted(group_pids(pgid) | {p for p in pids if psutil.pid_exists(p) and _not_zombie(p)})
        if still:
            raise TargetError(f"server process(es) {still} of process group {self.server.pid} survived the stop")
        return {"method": "process-group", "pgid": self.server.pid, "pids": pids, "stragglers": stragglers,
                "seconds": round(time.monotonic() - t0, 3), **held}

    def released(self, stopped: dict[str, Any], timeout: float) -> list[tuple[str, dict[str, Any]]]:
        s = self.settings
        waited = wait_port_free(s.host, s.port, timeout)
        out = [("port-free", {"host": s.host, "port": s.port, "seconds": round(waited, 3)})]
        out.append(("gpu-free", wait_gpu_released(set(stopped.get("pids", [])), timeout,
                                                  stopped.get("gpu_held_mib"), stopped.get("gpu_memory_used_mib"))))
        return out

    def alive(self) -> bool | None:
        return self.server.alive() if self.server is not None else None

    def root_pid(self) -> int | None:
        return self.server.pid if self.server is not None and self.server.alive() else None

    def log_source(self) -> LineSource | None:
        return LogFollower(self.server.log_path) if self.server is not None else None

    def log_mark(self) -> int:
        return 0  # every start writes a log of its own

    def capture_fields(self) -> dict[str, Any]:
        srv = self.server
        return {"log_path": srv.log_path if srv else None, "server_command": srv.command if srv else None,
                "server_env": srv.env if srv else None,
                "storage_path": self.settings.storage if self.settings.extract else None}

    def shutdown(self) -> None:
        if self.server is not None and self.server.alive():
            self.server.stop()


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class _AttachedTarget(Target):
    """A server repro did not launch: it is reached by URL and restarted by someone else's means."""

    def __init__(self, url: str, restart_cmd: str | None, restart_timeout: float, log_file: str | None,
                 storage_path: str | None, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        self.host, self.port = url_host_port(self.url)
        self.restart_cmd = restart_cmd
        self.restarts_itself = restart_cmd is not None
        self.restart_timeout = restart_timeout
        self.log_file = log_file
        self.storage_path = storage_path
        self.api_key = api_key
        self._model: str | None = None
        self.pid: int | None = None  # the server's root process on this machine, when known

    @property
    def local(self) -> bool:
        return self.host in LOCAL_HOSTS

    def check_url(self) -> None:
        """The server must answer now: an unreachable URL is bad input, not a stall."""
        try:
            status, body = http_get(self.url + "/v1/models", timeout=10.0, api_key=self.api_key)
        except OSError as exc:
            reason = getattr(exc, "reason", exc)
            raise TargetError(f"cannot reach {self.url}/v1/models ({reason}): is the server up, and is this its URL?"
                              ) from None
        if status != 200:
            raise TargetError(f"{self.url}/v1/models answered HTTP {status}, not a vLLM server ready to serve")
        try:
            self._model = str((json.loads(body).get("data") or [{}])[0].get("id") or "")
        except ValueError:
            raise TargetError(f"{self.url}/v1/models did not answer JSON: is this a vLLM server?") from None
        if self.log_file and not Path(self.log_file).is_file():
            raise UsageError(f"--log-file {self.log_file}: no such file")

    def launch(self) -> dict[str, Any]:
        return {"method": "restart-cmd (started by the command)"} if self.restarts_itself else {}

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        t0 = time.monotonic()
        self._model = wait_ready(self.url, timeout, self.alive, self.api_key)
        return {"model": self._model, "seconds": round(time.monotonic() - t0, 3)}

    def released(self, stopped: dict[str, Any], timeout: float) -> list[tuple[str, dict[str, Any]]]:
        if self.restarts_itself:
            return [("port-free", {"status": "skipped", "why": "the restart command stops and starts the server"})]
        if not self.local:
            return [("port-free", {"status": "skipped", "why": f"{self.host} is not this machine"})]
        waited = wait_port_free(self.host, self.port, timeout)
        out = [("port-free", {"host": self.host, "port": self.port, "seconds": round(waited, 3)})]
        out.append(("gpu-free", wait_gpu_released(set(stopped.get("pids", [])), timeout,
                                                  stopped.get("gpu_held_mib"), stopped.get("gpu_memory_used_mib"))))
        return out

    def log_source(self) -> LineSource | None:
        return LogFollower(self.log_file) if self.log_file else None

    def capture_fields(self) -> dict[str, Any]:
        return {"log_path": Path(self.log_file) if self.log_file else None, "storage_path": self.storage_path}

    def alive(self) -> bool | None:
        if self.pid is None:
            return None
        return psutil.pid_exists(self.pid) and _not_zombie(self.pid)

    def root_pid(self) -> int | None:
        return self.pid


class DockerTarget(_AttachedTarget):
    kind = "docker"

    def __init__(self, name: str, url: str, restart_cmd: str | None = None, restart_timeout: float = 300.0,
                 log_file: str | None = None, storage_path: str | None = None, api_key: str | None = None) -> None:
        super().__init__(url, restart_cmd, restart_timeout, log_file, storage_path, api_key)
        self.name = name

    def check(self) -> None:
        from repro.capture import docker as docker_mod

        pid = docker_mod.container_pid(self.name)  # TargetError: no such container / not running / no daemon
        self.pid = pid if psutil.pid_exists(pid) else None  # a remote daemon's pids are not ours to see
        if self.restart_cmd:
            check_restart_cmd(self.restart_cmd)
        self.check_url()

    def _docker(self, *args: str, timeout: float = 120.0) -> None:
        try:
            r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TargetError(f"docker {' '.join(args)} did not finish within {timeout:.0f} s") from None
        if r.returncode != 0:
            raise TargetError(f"docker {' '.join(args)} failed: {(r.stderr or r.stdout).strip()[-300:]}")

    def stop(self) -> dict[str, Any]:
        pids = sorted(tree_pids(self.pid))
        if self.restart_cmd:
            return {**run_restart_cmd(self.restart_cmd, self.restart_timeout), "pids": pids}
        t0 = time.monotonic()
        self._docker("stop", "--time", "20", self.name)
        return {"method": "docker stop", "container": self.name, "pids": pids,
                "seconds": round(time.monotonic() - t0, 3)}

    def launch(self) -> dict[str, Any]:
        if not self.restart_cmd:
            self._docker("start", self.name)
        from repro.capture import docker as docker_mod

        try:
            pid = docker_mod.container_pid(self.name)
            self.pid = pid if psutil.pid_exists(pid) else None
        except TargetError:
            self.pid = None
        return {"method": "restart-cmd" if self.restart_cmd else "docker start", "container": self.name,
                "pid": self.pid}

    def log_source(self) -> LineSource | None:
        if self.log_file:
            return LogFollower(self.log_file)
        try:
            return DockerLogFollower(self.name)
        except OSError:
            return None

    def log_tail(self, since: int = 0, max_bytes: int = 2_000_000) -> str:
        if self.log_file:
            return super().log_tail(since, max_bytes)
        from repro.capture import docker as docker_mod

        try:  # the container's log since its last start is what `docker logs` keeps
            r = subprocess.run(docker_mod.logs_command(self.name, 5000), capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return (r.stdout + r.stderr)[-max_bytes:]

    def capture_fields(self) -> dict[str, Any]:
        return {**super().capture_fields(), "docker": self.name}


class ExternalTarget(_AttachedTarget):
    kind = "url"

    def __init__(self, url: str, restart_cmd: str, pid: int | None = None, restart_timeout: float = 300.0,
                 log_file: str | None = None, storage_path: str | None = None, api_key: str | None = None) -> None:
        super().__init__(url, restart_cmd, restart_timeout, log_file, storage_path, api_key)
        self.pid = pid

    def check(self) -> None:
        if self.pid is not None and not psutil.pid_exists(self.pid):
            raise TargetError(f"--pid {self.pid}: no such process")
        assert self.restart_cmd is not None
        check_restart_cmd(self.restart_cmd)
        self.check_url()
        if self.pid is not None:
            self.pid = procs.find_server_root(self.pid)
        self._find_log()

    def _find_log(self) -> None:
        """Without --log-file, a server on this machine that writes its output to a file: follow that file (it
        holds the traceback of a death, which /proc cannot give once the server is gone)."""
        if (self.log_file and not getattr(self, "_log_found", False)) or not self.local:
            return
        from repro.server.attached import find_local_server

        found = find_local_server(self.url)
        if found is not None and found.log_path:
            self.log_file, self._log_found = found.log_path, True

    def stop(self) -> dict[str, Any]:
        assert self.restart_cmd is not None
        pids = sorted(tree_pids(self.pid))
        info = run_restart_cmd(self.restart_cmd, self.restart_timeout)
        return {**info, "pids": pids}

    def launch(self) -> dict[str, Any]:
        # The old pid is gone after a restart: the new root is whoever listens on the URL's port.
        self.pid = None
        return super().launch()

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        info = super().wait_ready(timeout)
        if self.local:
            from repro.server.procs import port_owner

            owner = port_owner(self.url)
            self.pid = procs.find_server_root(owner) if owner else None
            self._find_log()  # a restarted server may write elsewhere
        return {**info, "pid": self.pid, "log": self.log_file}
