"""One poll of a watched server -> the shared detector's :class:`Observation`.

The watchdog has no load and no event loop, so it reads synchronously: /metrics, the new
lines of the server log, whether the server process is alive, and the optional probe; the
Observation is built from them by :func:`repro.monitor.observe.build_observation`, the same
function ``repro stress`` uses. The stall decision itself is the detector's.

The probe (``--probe``) is the watchdog's only traffic: one tiny request every
``--probe-interval`` in a thread, never part of any workload. It is presented to the
detector as a one-request client: a probe that is answered is progress (an idle server is
healthy), a probe in flight while the server reports nothing is a suspect, and a probe
that times out makes it an engine stall. A probe that timed out stays counted as in flight
until a later probe is answered: from the watchdog's side that request was never served,
and the next probe would otherwise open a window in which the client holds nothing.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Protocol

from repro.hsfiles.checker import FileChecker
from repro.hsfiles.response import read_response
from repro.monitor.detector import REFUSED, ClientSnapshot, Observation
from repro.monitor.metrics import MetricsParseError, MetricsSample, parse_metrics
from repro.monitor.observe import PARSE_ERROR, LogWarning, build_observation

PROBE_PROMPT = [10, 11]


class LineSource(Protocol):
    def read_lines(self) -> list[str]: ...

    def close(self) -> None: ...


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def fetch_metrics(url: str, timeout: float = 5.0, api_key: str | None = None) -> tuple[str | None, str | None]:
    """GET /metrics -> (text, None) or (None, error) with the detector's error names."""
    req = urllib.request.Request(url + "/metrics", headers=_headers(api_key))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return None, f"http {exc.code}"
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (ConnectionRefusedError, ConnectionResetError)):
            return None, REFUSED
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return None, "timeout"
        return None, "connect"
    except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
        return None, REFUSED
    except (socket.timeout, TimeoutError):
        return None, "timeout"
    except OSError:
        return None, "connect"
    return text, None


def scrape(url: str, timeout: float = 5.0, api_key: str | None = None) -> tuple[MetricsSample | None, str | None]:
    """GET /metrics -> (sample, None) or (None, error) with the detector's error names."""
    text, err = fetch_metrics(url, timeout, api_key)
    if text is None:
        return None, err
    try:
        return parse_metrics(text), None
    except MetricsParseError:
        return None, PARSE_ERROR


class Prober:
    """Sends one tiny completion every `interval` s from a thread; the detector sees it as a client."""

    def __init__(self, url: str, model: str, interval: float, timeout: float, api_key: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url, self.model, self.interval, self.timeout, self.api_key = url, model, interval, timeout, api_key
        self.clock = clock
        self.in_flight = 0
        self.completed = 0
        self.failed = 0
        self.sent = 0
        self.unanswered = False  # the last probe timed out and none was answered since
        self._result: tuple[str, int] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._checker = FileChecker(consume="delete")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="repro-watch-probe", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.probe_once()

    def probe_once(self) -> str:
        body = json.dumps({"model": self.model, "prompt": PROBE_PROMPT, "max_tokens": 1}).encode()
        req = urllib.request.Request(self.url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json", **_headers(self.api_key)})
        with self._lock:
            self.in_flight += 1
            self.sent += 1
        result: tuple[str, int] = ("error", 0)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                info = read_response(json.loads(r.read()))
            result = ("ok", (info.prompt_tokens or 0) + (info.completion_tokens or 0))
            if info.hs_path:  # the probe's hidden-state file is nobody's: remove it once written
                threading.Thread(target=self._checker.discard, args=(info.hs_path,), daemon=True).start()
        except (socket.timeout, TimeoutError):
            result = ("timeout", 0)
        except urllib.error.URLError as exc:
            result = ("timeout" if isinstance(exc.reason, (socket.timeout, TimeoutError)) else "error", 0)
        except (OSError, ValueError, http.client.HTTPException):
            result = ("error", 0)
        with self._lock:
            self.in_flight -= 1
            if result[0] == "ok":
                self.completed += 1
                self.unanswered = False
            else:
                self.failed += 1
                self.unanswered = self.unanswered or result[0] == "timeout"
            self._result = result
        return result[0]

    def take(self) -> tuple[ClientSnapshot, str | None, int]:
        """The client view now, and the probe that ended since the previous call (result, tokens)."""
        with self._lock:
            in_flight = self.in_flight + (1 if self.unanswered and not self.in_flight else 0)
            snap = ClientSnapshot(in_flight=in_flight, completed=self.completed, failed=self.failed)
            res, self._result = self._result, None
        return snap, (res[0] if res else None), (res[1] if res else 0)


class Observer:
    """Builds one Observation per call from /metrics, the log, the process and the probe.

    Warning markers in the log (:func:`repro.monitor.logs.warning_marker`) are kept in ``warnings``
    (each once) and handed to ``on_warning`` (marker, line) the first time they appear."""

    def __init__(self, url: str, log: LineSource | None = None, alive: Callable[[], bool | None] | None = None,
                 prober: Prober | None = None, clock: Callable[[], float] = time.monotonic,
                 timeout: float = 5.0, api_key: str | None = None,
                 on_warning: Callable[[LogWarning], None] | None = None) -> None:
        self.url, self.log, self.alive, self.prober = url, log, alive, prober
        self.clock, self.timeout, self.api_key = clock, timeout, api_key
        self.on_warning = on_warning
        self.warnings: list[str] = []

    def observe(self) -> Observation:
        text, err = fetch_metrics(self.url, self.timeout, self.api_key)
        lines = self.log.read_lines() if self.log is not None else []
        client, probe, probe_tokens = (self.prober.take() if self.prober is not None else (None, None, 0))
        alive = self.alive() if self.alive is not None else None
        seen = build_observation(self.clock(), text, err, lines, alive, client, probe, probe_tokens)
        for w in seen.warnings:
            if w.marker not in self.warnings:
                self.warnings.append(w.marker)
                if self.on_warning is not None:
                    self.on_warning(w)
        return seen.observation

    def close(self) -> None:
        if self.prober is not None:
            self.prober.close()
        if self.log is not None:
            self.log.close()
