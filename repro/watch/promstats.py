"""The watchdog's own Prometheus counters, served on --metrics-port.

``repro_watch_stalls_total{class}``, ``repro_watch_restarts_total``,
``repro_watch_captures_total{status}``, ``repro_watch_last_stall_timestamp_seconds``,
``repro_watch_state`` (0 healthy, 1 suspect, 2 stalled, 3 restarting, 4 gave up, 5 starting,
6 waiting for the hidden-state store to have space again) and
``repro_watch_up`` (1 while the watched server answers). A private registry, so two
watchdogs in one process (tests) never collide.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server

from repro.errors import UsageError
from repro.watch.health import StateFile

STATES = {"healthy": 0, "suspect": 1, "stalled": 2, "restarting": 3, "gave-up": 4, "starting": 5, "storage-wait": 6}


class WatchMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.stalls = Counter("repro_watch_stalls", "Stalls detected by the watchdog", ["class"], registry=r)
        self.restarts = Counter("repro_watch_restarts", "Restarts of the watched server", registry=r)
        self.captures = Counter("repro_watch_captures", "Captures taken before a restart", ["status"], registry=r)
        self.last_stall = Gauge("repro_watch_last_stall_timestamp_seconds",
                                "Unix time of the last detected stall (0: none yet)", registry=r)
        self.state = Gauge("repro_watch_state", "0 healthy, 1 suspect, 2 stalled, 3 restarting, 4 gave up, "
                                                "5 starting, 6 waiting for storage space", registry=r)
        self.storage_warnings = Counter("repro_watch_storage_warnings",
                                        "Storage warnings (storage-leak, storage-exhaustion) raised", ["kind"], registry=r)
        self.up = Gauge("repro_watch_up", "1 while the watched server answers", registry=r)
        self._server: Any = None
        self.state_file: StateFile | None = None  # repro's own view for a HEALTHCHECK (repro.watch.health)

    def set_state(self, name: str) -> None:
        self.state.set(STATES[name])
        if self.state_file is not None:
            self.state_file.set(name, STATES[name])

    def heartbeat(self) -> None:
        """One evaluation done: the state file says when (a stale one means the watch itself is stuck)."""
        if self.state_file is not None:
            self.state_file.write()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Listen on host:port (0: any free port); return the port."""
        try:
            res = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise UsageError(f"--metrics-port {port}: cannot listen on {host}:{port} ({exc.strerror})") from None
        self._server = res[0] if isinstance(res, tuple) else None
        return int(self._server.server_port) if self._server is not None else port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def text(self) -> str:
        return generate_latest(self.registry).decode()
