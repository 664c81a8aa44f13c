"""Capture under a time budget, and the --stall-hook hook: neither may block a restart.

The capture stage (:func:`repro.capture.run.capture`) runs in a daemon thread; the
supervisor waits for it at most ``budget`` seconds and then restarts the server whatever
the capture is doing (py-spy calls inside it have their own hard timeouts, so a thread
left behind ends on its own once the processes it samples are gone). The hook runs in its
own process group, is never waited for by the supervisor, and is killed (by that group)
after its timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class BoundedResult:
    status: str  # done | failed | timeout
    value: Any = None
    error: str | None = None
    seconds: float = 0.0


def run_bounded(fn: Callable[[], Any], budget: float, name: str = "repro-watch-capture",
                clock: Callable[[], float] = time.monotonic) -> BoundedResult:
    """Run `fn` in a daemon thread; return after it finished or after `budget` seconds."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported as a failed capture, never raised into the loop
            box["error"] = f"{type(exc).__name__}: {exc}"

    t0 = clock()
    th = threading.Thread(target=target, name=name, daemon=True)
    th.start()
    th.join(budget)
    seconds = round(clock() - t0, 3)
    if th.is_alive():
        return BoundedResult("timeout", seconds=seconds)
    if "error" in box:
        return BoundedResult("failed", error=box["error"], seconds=seconds)
    return BoundedResult("done", value=box.get("value"), seconds=seconds)


class Hook:
    """`sh -c CMD` with the stall's details in its environment, in the background."""

    def __init__(self, cmd: str, timeout: float = 300.0,
                 on_done: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.cmd = cmd
        self.timeout = timeout
        self.on_done = on_done
        self.threads: list[threading.Thread] = []

    def fire(self, env: dict[str, str]) -> int:
        """Start the hook; return its pid. Its exit is reported through `on_done`."""
        full = {**os.environ, **env}
        proc = subprocess.Popen(["sh", "-c", self.cmd], env=full, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        t0 = time.monotonic()

        def reap() -> None:
            try:
                _, err = proc.communicate(timeout=self.timeout)
                rec = {"status": "exited", "rc": proc.returncode}
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the hook's own process group, started above
                except ProcessLookupError:
                    pass
                _, err = proc.communicate()
                rec = {"status": "killed", "why": f"still running after {self.timeout:.0f} s"}
            rec["seconds"] = round(time.monotonic() - t0, 3)
            if err:
                rec["stderr"] = err.decode("utf-8", "replace")[-500:]
            if self.on_done is not None:
                self.on_done(rec)

        th = threading.Thread(target=reap, name="repro-watch-hook", daemon=True)
        th.start()
        self.threads.append(th)
        return proc.pid

    def join(self, timeout: float) -> None:
        for th in self.threads:
            th.join(timeout)
