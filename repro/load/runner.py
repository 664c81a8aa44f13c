"""The stress run: load generator + monitor + detector, writing a run directory.

:func:`run_stress` is the core entry point (``repro stress`` only parses flags
into a :class:`~repro.scenario.Scenario` and calls it; bisect trials call it
directly). It launches the server unless the scenario has a URL or a server is
passed in, drives the load, polls /metrics and the log once per
``detect.poll_interval``, feeds the :class:`~repro.monitor.detector.Detector`,
and stops on the first stall, at the end of the duration/request budget, or on
SIGINT/SIGTERM. Files in the run directory:

``scenario.json``  ``Scenario.to_dict()`` plus ``server_command``
``requests.jsonl`` one record per request, written as it finishes
``timeline.csv``   one row per poll: client and server counters, the fidelity ratio
``events.jsonl``   detector transitions, capture, stop reasons
``summary.json``   ``{"schema": "repro.stress.summary", "version": 1, ...}``

Storage (issue 8): with a known storage path (``--storage-path``, or the launched
server's ``--storage``) every returned hidden-state path is claimed, the store is
censused in a thread at a bounded rate, ``storage-leak``/``storage-exhaustion`` and
``abort-storm`` are warning events (the run goes on), and a server-dead verdict
names the storage cause from the log (ENOSPC in the hidden-state write).

Load fidelity (issue 9): prompts are built ahead in a thread, hidden-state files
are checked in a thread pool after the concurrency slot is released, the HTTP
pool is sized to the concurrency, and nothing on the request path grows with the
number of requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import functools
import json
import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp

from repro.errors import (EXIT_FILES, EXIT_INTERRUPTED, EXIT_OK, EXIT_STALL, EXIT_TARGET, EXIT_USAGE, ReproError,
                          TargetError)
from repro.load import limits
from repro.load.display import Progress
from repro.load.feed import PromptFeed
from repro.load.fidelity import Breakdown, instant as fidelity_instant
from repro.load.prompts import PromptSource, load_prompts_file
from repro.load.records import LinearHistogram, RequestRecord, RunStats
from repro.load import speculators
from repro.hsfiles.checker import FileChecker
from repro.hsfiles.response import read_response
from repro.load.workloads import HIDDEN_STATES, SPECULATORS, PreparedRequest, Workload
from repro.monitor.detector import (ABORT_STORM, CLIENT_STALL, REFUSED, SERVER_DEAD, STALLED, SUSPECT, Assessment,
                                    ClientSnapshot, Detector, Observation)
from repro.monitor.logs import DockerLogFollower, LogFollower, fatal_marker, parse_stats_line, warning_marker
from repro.monitor.metrics import MetricsParseError, MetricsSample, parse_metrics
from repro.scenario import Scenario
from repro.storage.causes import storage_cause
from repro.storage.alerts import StorageWarning, StorageWatch
from repro.server.attached import LocalServer, find_local_server
from repro.server import connectors
from repro.server.launcher import VllmServer

SUMMARY_SCHEMA = "repro.stress.summary"
SUMMARY_VERSION = 1
DEFAULT_VOCAB = 500  # safe for any model (the tiny one has 512) when the vocabulary size is unknown
BAD_FILES_DIR = "bad-files"  # failing hidden-state files kept for inspection (up to --keep-bad)
REJECTED = (400, 413, 422)  # the server refused the request itself (too long, invalid): counted apart from errors
TIMELINE_FIELDS = ["t", "wall", "client_in_flight", "client_in_check", "started", "finished", "ok", "failed",
                   "timeouts", "server_running", "server_waiting", "server_in_system", "kv_usage",
                   "prompt_tokens_total", "generation_tokens_total", "fidelity", "metrics_error", "state", "class", "completions", "probe",
                   "orphan_files", "store_bytes", "fs_free_bytes"]


@dataclass
class StressResult:
    """What a stress run ended with (also in summary.json)."""

    exit_code: int  # 0 clean, 1 stall, 3 target unreachable/failed, 4 files bad or unverifiable, 130 interrupted
    outcome: str  # clean | stall | files-bad | interrupted | target-error | aborted
    stall: Assessment | None  # the detector's verdict when a stall was detected
    exposure_s: float  # seconds of load before the stall began (or the whole load when clean)
    load_s: float  # seconds the load ran
    counts: dict[str, Any]
    files: dict[str, Any]
    run_dir: Path
    paths: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _vocab_from_dir(d: str | None) -> int | None:
    if not d:
        return None
    cfg = Path(d).expanduser() / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    v = data.get("vocab_size") or (data.get("text_config") or {}).get("vocab_size")
    return int(v) if isinstance(v, int) and v > 0 else None


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class _Run:
    """One stress run on one event loop."""

    def __init__(self, scn: Scenario, run_dir: Path, server: VllmServer | None, url: str,
                 progress: Progress | None, group_stop: threading.Event | None = None) -> None:
        self.scn = scn
        self.group_stop = group_stop  # shared by sibling runs (bisect --parallel): a stall in one ends them all
        self.L = scn.load
        self.D = scn.detect
        self.run_dir = run_dir
        self.server = server
        self.url = url.rstrip("/")
        self.progress = progress or Progress()
        self.stats = RunStats()
        self.detector = Detector(self.D)
        self.stop_event: asyncio.Event
        self.stopping = False
        self.stop_reason: str | None = None
        self.interrupted = False
        self.stall: Assessment | None = None
        self.last: Assessment | None = None
        self.load_t0: float | None = None  # monotonic
        self.load_t1: float | None = None
        self.wall_t0 = time.time()
        self.issued = 0
        self.fidelity = LinearHistogram()
        self.client_fill = LinearHistogram()
        self.breakdown = Breakdown()  # client in flight / engine running / waiting / inside the API server
        self.clip: limits.PromptClip | None = None
        self._model_card: dict[str, Any] | None = None
        self.source: PromptSource | None = None
        self.bad_seen: set[str] = set()  # file error kinds already announced on the display
        self.model: str | None = None
        self.last_metrics: MetricsSample | None = None
        self.last_metrics_wall: float | None = None  # when /metrics last answered (for a death report)
        self.last_stats_text: str | None = None  # the last stats line as vLLM printed it
        self.refused_wall: float | None = None  # the first refused /metrics of the current streak
        self.attached: LocalServer | None = None  # an attached server found on this machine (read while alive)
        self._prev_tok: tuple[float, float, float] | None = None  # (t, prompt, gen) for the display
        self._tps: tuple[float | None, float | None] = (None, None)
        self.events_f: IO[str]
        self.requests_f: IO[str]
        self.timeline_f: IO[str]
        self.timeline: Any = None
        self.log: Any = None
        self.warnings: list[str] = []
        self.capture_info: dict[str, Any] | None = None
        self.abort_error: str | None = None
        self.consecutive_4xx = 0
        self.feed: PromptFeed | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._probe_result: tuple[str, int] | None = None
        self._probe_next = 0.0
        self.probes = 0
        self.storage: StorageWatch | None = None  # the hidden-state store's census, when its path is known
        self.storage_warnings: dict[str, dict[str, Any]] = {}  # kind -> first/last seen, count, last evidence
        self.storage_active: set[str] = set()
        self.storm: dict[str, Any] | None = None  # abort-storm episodes, for the summary
        self.storage_death: dict[str, str] | None = None
        self.claims_made = 0
        self._scans_total = 0
        self._scanning = False  # a census scan runs in a thread: claims/forgets wait in _claim_queue meanwhile
        self._claim_queue: list[tuple[bool, str]] = []
        headers = {"Content-Type": "application/json"}
        if scn.api_key:
            headers["Authorization"] = f"Bearer {scn.api_key}"
        self.speculators = Workload.parse(scn.load.workload).client == SPECULATORS
        self.tracker: speculators.FailureTracker | None = None
        self.gave_up: dict[str, Any] | None = None  # speculators' client gave up (consecutive failed samples)
        if self.speculators:  # what the OpenAI SDK sends for speculators (api_key="EMPTY")
            headers.setdefault("Authorization", f"Bearer {speculators.API_KEY}")
            headers["Accept"] = "application/json"
            self.tracker = speculators.FailureTracker(scn.load.max_consecutive_errors or scn.load.concurrency)
        self.headers = headers
        # what the server's connector hands back (launched: known; attached: --connector, else read from the answers)
        self.connector: connectors.Connector | None = (
            server.connector if server is not None and server.connector is not None
            else (connectors.resolve(scn.server.connector, gpu=False) if scn.server.connector != connectors.AUTO else None))
        self.handles = 0  # answers naming an object in a store (Mooncake handle), not a file

    # -- files -------------------------------------------------------------------
    def open_files(self) -> None:
        self.requests_f = open(self.run_dir / "requests.jsonl", "a", buffering=1 << 16)
        self.events_f = open(self.run_dir / "events.jsonl", "a", buffering=1)
        self.timeline_f = open(self.run_dir / "timeline.csv", "w", newline="", buffering=1 << 14)
        self.timeline = csv.writer(self.timeline_f)
        self.timeline.writerow(TIMELINE_FIELDS)

    def close_files(self) -> None:
        for f in (getattr(self, "requests_f", None), getattr(self, "events_f", None),
                  getattr(self, "timeline_f", None)):
            if f is not None and not f.closed:
                f.flush()
                f.close()

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        now = time.time()
        ev = {"t": round(self.rel(time.monotonic()), 3), "wall": _iso(now), "event": kind, **fields}
        if getattr(self, "events_f", None) is not None and not self.events_f.closed:
            self.events_f.write(json.dumps(ev, default=str) + "\n")
        return ev

    def rel(self, mono: float) -> float:
        return mono - (self.load_t0 if self.load_t0 is not None else self.stats.t0)

    # -- target ------------------------------------------------------------------
    async def resolve_model(self, session: aiohttp.ClientSession) -> str:
        if self.L.model_name:
            return self.L.model_name
        last = ""
        for attempt in range(3):
            try:
                async with session.get(self.url + "/v1/models", headers=self.headers,
                                       timeout=aiohttp.ClientTimeout(total=10)) as r:
                    if r.status in (401, 403):
                        raise TargetError(f"{self.url}/v1/models answered {r.status}: the server needs an API key",
                                          help="Pass --api-key or set REPRO_API_KEY.")
                    if r.status == 200:
                        data = await r.json(content_type=None)
                        models = data.get("data") or []
                        if models and models[0].get("id"):
                            self._model_root = models[0].get("root")
                            self._model_card = models[0]
                            return str(models[0]["id"])
                        last = "no model listed"
                    else:
                        last = f"HTTP {r.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if attempt < 2:
                await asyncio.sleep(1.0 * (attempt + 1))
        raise TargetError(f"cannot reach the server at {self.url} ({last})",
                          help="Check --url (scheme, host, port) and that vLLM is running: "
                               "curl URL/v1/models should answer 200.")

    async def prompt_clip(self, session: aiohttp.ClientSession) -> limits.PromptClip:
        """The prompt lengths to use: --prompt-len clipped to the served model's max_model_len."""
        card = self._model_card
        if card is None:  # --model-name given: /v1/models was not asked yet (best effort)
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError, AttributeError):
                async with session.get(self.url + "/v1/models", headers=self.headers,
                                       timeout=aiohttp.ClientTimeout(total=10)) as r:
                    data = await r.json(content_type=None) if r.status == 200 else {}
                models = data.get("data") or []
                card = next((m for m in models if m.get("id") == self.model), models[0] if models else None)
        n, source = limits.from_model_card(card), limits.FROM_MODELS
        if n is None and self.server is not None:
            n, source = limits.from_argv(self.server.command), limits.FROM_LAUNCH
        wl = Workload.parse(self.L.workload)
        max_tokens = max(1 if wl.hs_ratio > 0 else 0, self.L.max_tokens if wl.hs_ratio < 1 else 0)
        return limits.clip(self.L.prompt_len, n, source if n is not None else None, max_tokens)

    def vocab_size(self) -> int:
        if self.L.vocab_size:
            return self.L.vocab_size
        if self.server is not None:
            from repro.server.launcher import resolve_model

            try:
                model_dir = resolve_model(self.server.settings.model)[0]
            except ReproError:
                model_dir = None
            v = _vocab_from_dir(model_dir)
            if v:
                return v
        v = _vocab_from_dir(getattr(self, "_model_root", None))
        return v or DEFAULT_VOCAB

    # -- one request ----------------------------------------------------------------
    async def one(self, session: aiohttp.ClientSession, prep: PreparedRequest, prompt_wait: float) -> None:
        st = self.stats
        assert self.load_t0 is not None
        rec = RequestRecord(seq=prep.seq, kind=prep.kind, t_start=round(time.monotonic() - self.load_t0, 4),
                            latency=None, status="error", attempts=0, prompt_tokens=prep.prompt_len)
        rec.client_s["prompt_wait"] = prompt_wait
        st.prompt_wait_s.add(prompt_wait)
        st.started += 1
        timeout = aiohttp.ClientTimeout(total=self.L.request_timeout)
        body: bytes | None = None
        try:
            for attempt in range(self.L.retries + 1):
                rec.attempts = attempt + 1
                err = detail = None
                status = None
                st.in_flight += 1
                t0 = time.perf_counter()
                try:
                    async with session.post(self.url + prep.path, data=prep.body, headers=self.headers,
                                            timeout=timeout) as resp:
                        status = resp.status
                        body = await resp.read()
                except asyncio.TimeoutError:
                    err, detail = "timeout", f"no answer within {self.L.request_timeout:g} s (the server aborts it)"
                    st.attempt_timeouts += 1
                except aiohttp.ClientConnectorError as exc:
                    refused = isinstance(exc.os_error, ConnectionRefusedError)
                    err, detail = ("connection-refused" if refused else "connect"), str(exc)
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
                    err, detail = "disconnected", f"{type(exc).__name__}: {exc}"
                except aiohttp.ClientError as exc:
                    err, detail = "client-error", f"{type(exc).__name__}: {exc}"
                finally:
                    st.in_flight -= 1
                rec.latency = round(time.perf_counter() - t0, 6)
                rec.http_status = status
                if status == 200:
                    self.consecutive_4xx = 0
                    st.completions += 1
                    st.last_completion = time.monotonic()
                    rec.status, rec.error, rec.detail = "ok", None, None
                    break
                if status is not None:
                    err = f"http-{status}"
                    detail = (body or b"")[:300].decode("utf-8", "replace")
                    if "EngineDeadError" in detail or "EngineCore" in detail:
                        err = "engine-dead"
                rec.status = "timeout" if err == "timeout" else ("rejected" if status in REJECTED else "error")
                rec.error, rec.detail = err, detail
                if status is not None and 400 <= status < 500 and status not in (408, 429) and not self.speculators:
                    self.consecutive_4xx += 1
                    if self.consecutive_4xx >= max(8, min(64, self.L.concurrency)) and st.ok == 0:
                        self.abort_error = (f"every request is rejected with HTTP {status}: {detail.strip()[:200]}")
                        self.request_stop("rejected")
                    break  # the request itself is wrong: retrying cannot help
                if self.stopping or attempt >= self.L.retries:
                    break
                st.retries += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), self.backoff(attempt))
            checking = False
            if rec.status == "ok":
                checking = self.handle_ok(prep, rec, body or b"")
            else:
                st.finish(rec, self.requests_f)
            if not checking:
                self.check_slots.release()  # taken in issue(); a submitted check releases it when done
        except asyncio.CancelledError:
            rec.status, rec.error = "cancelled", rec.error or "cancelled"
            st.finish(rec, self.requests_f)
            self.check_slots.release()
            raise

    def model_dtype(self) -> str | None:
        """The dtype the hidden states must be stored in, when the launched server's --dtype says it."""
        cmd = self.server.command if self.server is not None else []
        if "--dtype" not in cmd[:-1]:
            return None
        from repro.hsfiles.expect import dtype_code

        last = len(cmd) - 1 - cmd[::-1].index("--dtype")  # vLLM takes the last one (passthrough may repeat it)
        return dtype_code(cmd[last + 1]) if last + 1 < len(cmd) else None

    def backoff(self, attempt: int) -> float:
        """Seconds before retrying after attempt ``attempt`` (0-based): 1, 2, 4 ...; speculators' 2, 4, 8 ..."""
        return speculators.backoff(attempt + 1) if self.speculators else 2.0 ** attempt

    def handle_ok(self, prep: PreparedRequest, rec: RequestRecord, body: bytes) -> bool:
        """Count the response; submit its file check (True) or finish the record now (False)."""
        st = self.stats
        try:
            data = json.loads(body)
            info = read_response(data)
            if prep.kind == SPECULATORS:  # speculators rejects such an answer at once, without retrying it
                speculators.validate(data, prep.prompt_tokens, prep.path.endswith("/chat/completions"))
        except speculators.InvalidResponse as exc:
            rec.status, rec.error, rec.detail = "error", "invalid-response", str(exc)
            st.finish(rec, self.requests_f)
            return False
        except (ValueError, AttributeError, IndexError, TypeError) as exc:
            rec.status, rec.error, rec.detail = "error", "bad-response", f"{type(exc).__name__}: {exc}"
            st.finish(rec, self.requests_f)
            return False
        rec.prompt_tokens = info.prompt_tokens if info.prompt_tokens is not None else rec.prompt_tokens
        rec.completion_tokens = info.completion_tokens
        if info.hs_path is None and info.handle is not None:
            self.note_handle(prep, rec, info)
            st.finish(rec, self.requests_f)
            return False
        if info.hs_path is None:
            if prep.kind in (HIDDEN_STATES, SPECULATORS):
                rec.file = {"ok": False, "error": "no-path",
                            "detail": "the response has no kv_transfer_params.hidden_states_path "
                                      "(is hidden-state extraction on?)"}
                self.announce_bad_file(rec.file)
            st.finish(rec, self.requests_f)
            return False
        if self.storage is not None:
            self.claims_made += 1
            self.claim(info.hs_path)  # before the check: the client owns it whatever the check finds
        expected = prep.prompt_tokens
        if expected is not None and info.prompt_ids is not None and list(expected) != list(info.prompt_ids):
            rec.file = {"ok": False, "error": "bad-tokens", "detail": "response prompt_token_ids differ from the prompt"}
        if expected is None:
            expected = tuple(info.prompt_ids) if info.prompt_ids is not None else None
        # The check runs in the pool; the concurrency slot is already free when it starts.
        st.in_check += 1
        loop = asyncio.get_running_loop()
        check = functools.partial(speculators.check_after_lock, self.checker) if prep.kind == SPECULATORS \
            else self.checker.check
        fut = loop.run_in_executor(self.pool, check, info.hs_path, expected, prep.kind in (HIDDEN_STATES, SPECULATORS))

        def done(f: "asyncio.Future[Any]") -> None:
            st.in_check -= 1
            self.check_slots.release()
            if f.cancelled():
                rec.file = {"ok": False, "error": "cancelled", "path": info.hs_path}
            elif f.exception() is not None:
                exc = f.exception()
                rec.file = {"ok": False, "error": "check-crashed", "detail": f"{type(exc).__name__}: {exc}"}
            else:
                r = f.result()
                prev_bad = rec.file
                rec.file = {"ok": r.ok and prev_bad is None, "path": info.hs_path,
                            "error": (prev_bad or {}).get("error") or r.error,
                            "bytes": r.nbytes, "shape": list(r.shape) if r.shape else None,
                            "dtype": r.dtype, "consumed": r.consumed, "seconds": round(r.seconds, 6),
                            "lock_wait": round(r.lock_wait, 6)}
                if r.detail or prev_bad:
                    rec.file["detail"] = (prev_bad or {}).get("detail") or r.detail
                rec.file = {k: v for k, v in rec.file.items() if v is not None}
                if r.kept_at:
                    rec.file["kept_at"] = r.kept_at
                if not rec.file["ok"] and self.load_t0 is not None:  # when the check gave up (stall accounting)
                    rec.file["t_end"] = round(time.monotonic() - self.load_t0, 3)
                if r.consumed in ("deleted", "moved"):
                    self.claim(info.hs_path, forget=True)
                rec.client_s["check"] = round(r.seconds, 6)
            if rec.file is not None and not rec.file.get("ok"):
                self.announce_bad_file(rec.file)
            st.finish(rec, self.requests_f)

        fut.add_done_callback(done)
        return True

    def announce_bad_file(self, f: dict[str, Any]) -> None:
        """The first file of each error kind that fails: one line on the display and an event, at once."""
        kind = str(f.get("error") or "?")
        if kind in self.bad_seen:
            return
        self.bad_seen.add(kind)
        where = f" (kept: {f['kept_at']})" if f.get("kept_at") else ""
        detail = str(f.get("detail") or "")[:300]
        self.event("file-bad", error=kind, detail=detail, path=f.get("path"), kept_at=f.get("kept_at"))
        self.progress.message(f"warning: a hidden-state file failed its check ({kind}: {detail}){where}; "
                              f"this run will not be reported clean")
    def note_handle(self, prep: PreparedRequest, rec: RequestRecord, info: Any) -> None:
        """An answer that names an object in a key-value store (hs-connectors' Mooncake backend), not a file.

        There is no file to check and nothing of it in a storage directory: the handle is recorded and counted,
        and its manifest (tensor shapes) is checked against the prompt where it says the number of tokens."""
        self.handles += 1
        h: dict[str, Any] = {"handle": info.handle, "transfer": connectors.HANDLE}
        meta = info.kv.get("metadata") if isinstance(info.kv.get("metadata"), dict) else {}
        if meta.get("total_aligned_bytes") is not None:
            h["bytes"] = meta["total_aligned_bytes"]
        n = meta.get("num_tokens")
        want = len(prep.prompt_tokens) if prep.prompt_tokens is not None else rec.prompt_tokens
        if n is not None and want is not None and n != want:
            h.update(ok=False, error="bad-handle", detail=f"the handle's manifest says {n} tokens, the prompt has {want}")
        rec.handle = h

    def sample_done(self, rec: RequestRecord) -> None:
        """speculators' give-up rule (RunStats calls this for every finished record)."""
        if self.tracker is None or rec.status == "cancelled" or self.stopping:
            return
        f = rec.file or {}
        failed = rec.status != "ok" or (not f.get("ok", True) and f.get("error") in speculators.SAMPLE_FAILURES)
        if not failed:
            self.tracker.success()
            return
        if self.tracker.failure():
            what = rec.error or f.get("error")
            self.gave_up = {"consecutive_failed_samples": self.tracker.consecutive, "threshold": self.tracker.threshold,
                            "last_error": what, "last_detail": (rec.detail or f.get("detail") or "")[:300],
                            "at_s": round(self.rel(time.monotonic()), 3)}
            self.abort_error = (f"speculators' client gives up here: {self.tracker.consecutive} samples in a row "
                                f"failed (--max-consecutive-errors {self.tracker.threshold}; last: {what})")
            self.event("give-up", **self.gave_up)
            self.progress.message(f"give-up: {self.abort_error}")
            self.request_stop("max-consecutive-errors")

    async def issue(self, session: aiohttp.ClientSession, feed: PromptFeed) -> PreparedRequest | None:
        """The next prepared request, or None when the budget is spent or the run stops."""
        if self.stopping:
            return None
        if self.L.requests is not None and self.issued >= self.L.requests:
            return None
        self.issued += 1
        await self.check_slots.acquire()  # bounded backlog of file checks (back-pressure, normally free)
        return await feed.get()

    async def worker(self, session: aiohttp.ClientSession, feed: PromptFeed) -> None:
        while True:
            t0 = time.perf_counter()
            prep = await self.issue(session, feed)
            if prep is None:
                return
            await self.one(session, prep, time.perf_counter() - t0)

    async def arrivals(self, session: aiohttp.ClientSession, feed: PromptFeed) -> None:
        """Poisson arrivals at --rate, capped at --concurrency in flight."""
        assert self.L.rate
        rng = random.Random(self.L.seed + 1)
        cap = asyncio.Semaphore(self.L.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        next_t = time.monotonic()
        try:
            while True:
                next_t += rng.expovariate(self.L.rate)
                delay = next_t - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await cap.acquire()
                t0 = time.perf_counter()
                prep = await self.issue(session, feed)
                if prep is None:
                    cap.release()
                    break
                task = asyncio.ensure_future(self.one(session, prep, time.perf_counter() - t0))
                tasks.add(task)

                def _done(t: asyncio.Task[None]) -> None:
                    tasks.discard(t)
                    cap.release()

                task.add_done_callback(_done)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            for t in list(tasks):
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def watch_group(self) -> None:
        """End this run when a sibling run (same bisect step) has found a stall: the step has its answer."""
        assert self.group_stop is not None
        while not self.group_stop.is_set():
            await asyncio.sleep(0.5)
        if self.stall is None:
            self.request_stop("sibling-stall")

    def request_stop(self, reason: str) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_reason = reason
            self.event("stop", reason=reason)
        self.stop_event.set()

    # -- monitor ---------------------------------------------------------------------
    async def scrape(self, session: aiohttp.ClientSession) -> tuple[MetricsSample | None, str | None]:
        try:
            async with session.get(self.url + "/metrics", headers=self.headers,
                                   timeout=aiohttp.ClientTimeout(total=max(2.0, 2 * self.D.poll_interval))) as r:
                if r.status != 200:
                    return None, f"http {r.status}"
                text = await r.text()
        except asyncio.TimeoutError:
            return None, "timeout"
        except aiohttp.ClientConnectorError as exc:
            return None, REFUSED if isinstance(exc.os_error, ConnectionRefusedError) else "connect"
        except aiohttp.ClientError as exc:
            return None, REFUSED if isinstance(exc, aiohttp.ServerDisconnectedError) else type(exc).__name__
        try:
            return await asyncio.to_thread(parse_metrics, text), None
        except MetricsParseError:
            return None, "parse"

    async def observe(self, session: aiohttp.ClientSession) -> Observation:
        metrics, err = await self.scrape(session)
        lines: list[str] = await asyncio.to_thread(self.log.read_lines) if self.log is not None else []
        stats_lines, fatal = [], None
        for ln in lines:
            s = parse_stats_line(ln)
            if s is not None:
                stats_lines.append(s)
                self.last_stats_text = ln.strip()
                continue
            fatal = fatal or fatal_marker(ln)
            w = warning_marker(ln)
            if w and w not in self.warnings:
                self.warnings.append(w)
                self.event("log-warning", message=w, line=ln[-300:])
        alive = self.server.alive() if self.server is not None else None
        st = self.stats
        client = ClientSnapshot(in_flight=st.in_flight, completed=st.completions, failed=st.failed,
                                aborted=st.attempt_timeouts)
        probe, self._probe_result = self._probe_result, None
        return Observation(time.monotonic(), metrics, err, alive, tuple(stats_lines), fatal, client,
                           probe=probe[0] if probe else None, probe_tokens=probe[1] if probe else 0)

    def maybe_probe(self, session: aiohttp.ClientSession, a: Assessment) -> None:
        """Server reports nothing while the client waits: ask it for one token (see the detector's notes)."""
        if not self.D.probe or a.state != SUSPECT or a.stall_class != CLIENT_STALL or self.detector.probe_failed:
            return
        if self._probe_task is not None or time.monotonic() < self._probe_next:
            return
        self._probe_task = asyncio.ensure_future(self.probe(session))

    async def probe(self, session: aiohttp.ClientSession) -> None:
        body = json.dumps({"model": self.model, "prompt": [10, 11], "max_tokens": 1}).encode()
        self.probes += 1
        t0 = time.monotonic()
        result: tuple[str, int] = ("error", 0)
        try:
            async with session.post(self.url + "/v1/completions", data=body, headers=self.headers,
                                    timeout=aiohttp.ClientTimeout(total=self.D.probe_timeout)) as r:
                data = await r.json(content_type=None) if r.status == 200 else None
            if data is not None:
                info = read_response(data)
                result = ("ok", (info.prompt_tokens or 0) + (info.completion_tokens or 0))
                if info.hs_path:  # the probe's own hidden-state file: remove it, count nothing
                    self.claim(info.hs_path)
                    asyncio.get_running_loop().run_in_executor(self.pool, self.checker.discard, info.hs_path)
        except asyncio.TimeoutError:
            result = ("timeout", 0)
        except (aiohttp.ClientError, ValueError):
            result = ("error", 0)
        finally:
            self._probe_result = result
            self._probe_task = None
            self._probe_next = time.monotonic() + self.D.probe_timeout
            self.event("probe", result=result[0], seconds=round(time.monotonic() - t0, 3))

    async def monitor(self, session: aiohttp.ClientSession) -> None:
        poll = self.D.poll_interval
        next_t = time.monotonic()
        while True:
            next_t += poll
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
            ob = await self.observe(session)
            a = self.detector.observe(ob)
            self.last = a
            if ob.metrics is not None:
                self.last_metrics, self.last_metrics_wall, self.refused_wall = ob.metrics, time.time(), None
            elif ob.metrics_error == REFUSED and self.refused_wall is None:
                self.refused_wall = time.time()
            await self.poll_storage()
            self.track_storm(a)
            if a.stall_class == SERVER_DEAD and a.state == STALLED:
                self.name_storage_cause(a)
            self.record_sample(ob, a)
            self.maybe_probe(session, a)
            if a.changed:
                self.event("detector", state=a.state, **{"class": a.stall_class},
                           since=None if a.since is None else round(self.rel(a.since), 3),
                           evidence=a.evidence)
            if a.state == STALLED and self.stall is None:
                self.stall = a
                self.stats.stall_began(round(self.rel(a.since or a.t), 3))  # files it never wrote are not bad
                self.event("stall", **{"class": a.stall_class}, since=round(self.rel(a.since or a.t), 3),
                           detected=round(self.rel(a.t), 3), evidence=a.evidence)
                self.request_stop("stall")
                if self.group_stop is not None:
                    self.group_stop.set()
                return  # the verdict stands; what follows (capture, cancelled requests) is not the server's state

    def record_sample(self, ob: Observation, a: Assessment) -> None:
        m = ob.metrics
        st = self.stats
        running = m.running if m else None
        waiting = m.waiting if m else None
        in_sys = m.in_server if m else None
        c = self.L.concurrency
        fid = None if in_sys is None else in_sys / c
        active = (self.load_t0 is not None and self.load_t1 is None and not self.stopping
                  and ob.t - self.load_t0 >= 2 * self.D.poll_interval)
        if active and fid is not None and not self.L.rate:
            self.fidelity.add(fid)
            self.client_fill.add(st.in_flight / c)
        if active and running is not None and waiting is not None:
            self.breakdown.add(st.in_flight, running, waiting)
        if m is not None and m.prompt_tokens is not None and m.generation_tokens is not None:
            if self._prev_tok is not None and ob.t > self._prev_tok[0]:
                dt = ob.t - self._prev_tok[0]
                self._tps = ((m.prompt_tokens - self._prev_tok[1]) / dt, (m.generation_tokens - self._prev_tok[2]) / dt)
            self._prev_tok = (ob.t, m.prompt_tokens, m.generation_tokens)
        self.timeline.writerow([
            round(self.rel(ob.t), 3), round(time.time(), 3), st.in_flight, st.in_check, st.started, st.finished,
            st.ok, st.failed, st.timeouts, running, waiting, in_sys, None if m is None else m.kv_usage,
            None if m is None else m.prompt_tokens, None if m is None else m.generation_tokens,
            None if fid is None else round(fid, 4), ob.metrics_error or "", a.state, a.stall_class or "",
            st.completions, ob.probe or "",
            *self.storage_columns()])
        self.timeline_f.flush()
        self.requests_f.flush()
        self.progress.update(self.snapshot(ob, a))

    def snapshot(self, ob: Observation, a: Assessment) -> dict[str, Any]:
        st = self.stats
        elapsed = self.rel(ob.t) if self.load_t0 is not None else 0.0
        dur = self.L.duration
        m = ob.metrics
        recent_fill = st.in_flight / self.L.concurrency
        return {
            "elapsed": max(0.0, elapsed), "remaining": None if dur is None else max(0.0, dur - elapsed),
            "duration": dur,
            "req_s": st.ok / elapsed if elapsed > 0 else 0.0, "in_flight": st.in_flight,
            "concurrency": self.L.concurrency, "in_check": st.in_check,
            "running": None if m is None else m.running, "waiting": None if m is None else m.waiting,
            "kv_pct": None if m is None or m.kv_usage is None else 100 * m.kv_usage,
            "prompt_tps": self._tps[0], "gen_tps": self._tps[1], "ok": st.ok, "files_ok": st.files_ok,
            "files_bad": st.files_bad, "files_not_written": st.files_not_written,
            "errors": dict(st.errors), "errors_total": sum(st.errors.values()),
            "since_progress": None if self.detector.last_progress_t is None else ob.t - self.detector.last_progress_t,
            "fidelity": None if m is None or m.in_server is None else m.in_server / self.L.concurrency,
            "client_limited": (not self.L.rate and self.fidelity.n >= 5 and (self.client_fill.mean or 0) < 0.9
                               and recent_fill < 0.9),
            "api_server": fidelity_instant(st.in_flight, None if m is None else m.running,
                                           None if m is None else m.waiting),
            "api_server_heavy": self.breakdown.api_server_heavy(self.L.concurrency),
            "files_not_clean": st.files_bad > 0,
            "state": a.state, "class": a.stall_class,
        }

    # -- storage and abort storms ---------------------------------------------------
    def claim(self, path: str, forget: bool = False) -> None:
        """Claim (or forget) a returned hidden-state path; queued while a scan runs in its thread (event loop only)."""
        if self.storage is None:
            return
        if self._scanning:
            self._claim_queue.append((forget, path))
        elif forget:
            self.storage.forget(path)
        else:
            self.storage.claim(path)

    async def poll_storage(self, force: bool = False) -> None:
        """Scan the store when due (StorageWatch rate-limits itself) and log its warnings as events.

        The scan runs in a thread (a rescan of 200,000 files takes most of a second): claims and forgets that
        arrive meanwhile are queued and applied after it, in order."""
        w = self.storage
        if w is None or not (force or w.due()):
            return
        before = w.last
        self._scanning = True
        try:
            warnings = await asyncio.to_thread(w.poll, force)
        except OSError as exc:  # the store went away under us: say so once, never crash the run
            self.event("storage-error", error=f"{type(exc).__name__}: {exc}")
            self.storage = None
            return
        finally:
            self._scanning = False
            queued, self._claim_queue = self._claim_queue, []
            for forget, path in queued:
                (w.forget if forget else w.claim)(path)
        if self.storage.last is before:
            return  # not due
        self._scans_total += 1
        if warnings or self.storage_active:
            now = {w.kind for w in warnings}
            for w in warnings:
                self.note_storage_warning(w)
            for kind in self.storage_active - now:
                self.event(f"{kind}-end")
            self.storage_active = now

    def note_storage_warning(self, w: StorageWarning) -> None:
        rec = self.storage_warnings.get(w.kind)
        t = round(self.rel(time.monotonic()), 3)
        if rec is None:
            rec = self.storage_warnings[w.kind] = {"first_s": t, "count": 0}
        rec.update(last_s=t, message=w.message, evidence=w.evidence)
        rec["count"] += 1
        if w.kind not in self.storage_active:  # one event per episode, not per scan
            self.event(w.kind, message=w.message, evidence=w.evidence)
            self.progress.message(f"warning: {w.kind}: {w.message}")

    def storage_columns(self) -> list[Any]:
        last = self.storage.last if self.storage is not None else None
        if last is None:
            return [None, None, None]
        return [last.orphan_files, last.bytes, last.fs_free_bytes]

    def track_storm(self, a: Assessment) -> None:
        active = self.storm is not None and self.storm.get("active")
        if a.warning == ABORT_STORM:
            ev = a.evidence.get("abort_storm") or {}
            if self.storm is None:
                self.storm = {"episodes": 0, "first_s": round(self.rel(a.t), 3), "seconds": 0.0,
                              "peak_abort_share": 0.0, "min_goodput_per_s": None}
            s = self.storm
            if not active:
                s["episodes"] += 1
                s["active"] = True
                s["_start"] = a.t
                self.event(ABORT_STORM, evidence=ev)
                self.progress.message(f"warning: abort-storm: {ev.get('aborted')} of "
                                      f"{ev.get('aborted', 0) + ev.get('completed', 0)} requests in "
                                      f"{ev.get('window_s')} s ended in client timeouts")
            s["last_s"] = round(self.rel(a.t), 3)
            s["peak_abort_share"] = max(s["peak_abort_share"], ev.get("abort_share") or 0.0)
            g = ev.get("goodput_per_s")
            if g is not None:
                s["min_goodput_per_s"] = g if s["min_goodput_per_s"] is None else min(s["min_goodput_per_s"], g)
            s["last_evidence"] = ev
        elif active:
            assert self.storm is not None
            self.storm["active"] = False
            self.storm["seconds"] = round(self.storm["seconds"] + a.t - self.storm.pop("_start", a.t), 3)
            self.event(f"{ABORT_STORM}-end")

    def client_summary(self) -> dict[str, Any]:
        """Whose request shape the load had, and (speculators) whether its give-up rule ended the run."""
        if not self.speculators:
            return {"shape": "repro", "workload": self.L.workload}
        assert self.tracker is not None
        return {"shape": "speculators", "speculators_version": speculators.SPECULATORS_VERSION,
                "request_timeout_s": self.L.request_timeout, "retries": self.L.retries,
                "backoff_s": [speculators.backoff(a) for a in range(1, self.L.retries + 1)],
                "lock_wait_s": speculators.LOCK_TIMEOUT, "max_consecutive_errors": self.tracker.threshold,
                "peak_consecutive_failures": self.tracker.peak, "gave_up": self.gave_up}

    def storm_summary(self) -> dict[str, Any] | None:
        if self.storm is None:
            return None
        s = {k: v for k, v in self.storm.items() if not k.startswith("_")}
        if s.pop("active", False) and "_start" in self.storm and self.last is not None:
            s["seconds"] = round(s["seconds"] + self.last.t - self.storm["_start"], 3)
        s["verdict"] = ("warning: most requests ended in client timeouts (each aborts the request on the server) "
                        "and goodput collapsed; the engine kept working -- a client policy problem, not a stall")
        return s

    def name_storage_cause(self, a: Assessment) -> None:
        """A dead server whose log shows ENOSPC or another I/O error: put the storage cause in the evidence."""
        if self.storage_death is not None:
            return
        text = ""
        log_path = self.server_log_path()
        if log_path is not None:
            with contextlib.suppress(OSError):
                with open(log_path, "rb") as f:
                    f.seek(0, 2)
                    f.seek(max(0, f.tell() - 2_000_000))
                    text = f.read().decode("utf-8", "replace")
        cause = storage_cause(text) if text else None
        if cause is None:
            return
        self.storage_death = cause
        a.evidence["storage_cause"] = cause
        a.evidence.setdefault("reasons", []).append(
            f"storage: {cause['kind']} in the hidden-state write ({cause['line'][:200]})")

    def hands_back_handles(self) -> bool:
        """The connector answers with handles into a store (Mooncake), so no storage directory holds the output."""
        conn, handles = getattr(self, "connector", None), getattr(self, "handles", 0)
        if conn is not None and not conn.writes_files:
            return True
        return handles > 0 and self.stats.files_ok + self.stats.files_bad == 0

    def no_census(self) -> dict[str, Any]:
        return {"census": None, "applies": False, "handles": self.handles,
                "why": "the connector hands back handles to objects in a Mooncake store, not files: there is no "
                       "file to check and no storage directory to count orphans in (an aborted request's object, "
                       "if the store keeps one, is not visible from here)"}

    def storage_summary(self) -> dict[str, Any] | None:
        if self.hands_back_handles():
            return self.no_census()
        w = self.storage
        if w is None:
            return None
        last = w.last
        proj = w.last_projection
        hist = list(w.census.history)
        d: dict[str, Any] = {
            "path": str(w.census.path), "grace_s": w.census.grace, "horizon_s": w.horizon,
            "scans": len(hist),  # history is bounded; total scans below
            "scans_total": getattr(self, "_scans_total", len(hist)),
            "scan_seconds_total": round(sum(s.scan_seconds for s in hist), 6),
            "scan_seconds_max": round(max((s.scan_seconds for s in hist), default=0.0), 6),
            "warnings": self.storage_warnings,
        }
        if last is not None:
            d.update({
                "files": last.files, "bytes": last.bytes, "lock_files": last.lock_files,
                "claimed_files": last.claimed_files, "claimed_bytes": last.claimed_bytes,
                "orphan_files": last.orphan_files, "orphan_bytes": last.orphan_bytes,
                "pending_files": last.pending_files, "oldest_orphan_age_s": last.oldest_orphan_age,
                "fs_free_bytes": last.fs_free_bytes, "fs_total_bytes": last.fs_total_bytes,
                "fs_free_inodes": last.fs_free_inodes, "fs_total_inodes": last.fs_total_inodes,
                "claims_made": self.claims_made,
            })
        if proj is not None:
            d["rates"] = {"orphan_files_per_s": proj.orphan_files_per_s, "orphan_bytes_per_s": proj.orphan_bytes_per_s,
                          "used_bytes_per_s": proj.used_bytes_per_s, "window_s": proj.window_s}
            d["projected_seconds_to_full"] = proj.seconds_to_full
            d["projected_seconds_to_no_inodes"] = proj.seconds_to_no_inodes
        d["orphan_sample"] = [{"name": n, "bytes": b, "age_s": round(age, 3)}
                              for n, b, age in w.census.orphans(limit=10)]
        return d

    def storage_accounting(self) -> dict[str, Any] | None:
        """For the bundle: the summary's storage figures, the orphan census with a sample of names, the growth curve."""
        d = self.storage_summary()
        if d is None or self.storage is None or d.get("applies") is False:
            return None
        c = self.storage.census
        d["orphan_sample"] = [{"name": n, "bytes": b, "age_s": round(age, 3)} for n, b, age in c.orphans(limit=50)]
        d["growth_curve"] = [{"t": round(s.t, 3), "files": s.files, "bytes": s.bytes, "orphan_files": s.orphan_files,
                              "orphan_bytes": s.orphan_bytes, "fs_free_bytes": s.fs_free_bytes,
                              "fs_free_inodes": s.fs_free_inodes} for s in c.history]
        return d

    async def settle_storage(self) -> None:
        """End of the run: wait for late writes (vLLM writes an aborted request's file after the abort), then take
        the final census with no grace -- no response can claim a file any more, so every unclaimed file is an orphan."""
        w = self.storage
        if w is None:
            return
        from repro.storage.census import DATA_SUFFIX

        def count() -> int:
            try:
                return sum(1 for n in os.listdir(w.census.path) if n.endswith(DATA_SUFFIX))
            except OSError:
                return -1

        deadline = time.monotonic() + min(15.0, max(2.0, w.census.grace))
        prev, stable_since = await asyncio.to_thread(count), time.monotonic()
        while time.monotonic() < deadline and not self.interrupted:
            await asyncio.sleep(0.5)
            n = await asyncio.to_thread(count)
            if n != prev:
                prev, stable_since = n, time.monotonic()
            elif time.monotonic() - stable_since >= 3.0:
                break
        grace = w.census.grace
        w.census.grace = 0.0
        try:
            await self.poll_storage(force=True)
        finally:
            w.census.grace = grace
        if w.last is not None:
            self.event("storage-final", files=w.last.files, claimed=w.last.claimed_files,
                       orphans=w.last.orphan_files, orphan_bytes=w.last.orphan_bytes)

    # -- on a stall ------------------------------------------------------------------
    async def on_stall(self) -> None:
        a = self.stall
        assert a is not None
        detection = self.detection_dict()
        (self.run_dir / "detection.json").write_text(json.dumps(detection, indent=2, default=str) + "\n")
        self.progress.message(f"STALL detected: {a.stall_class} (bad for {a.evidence.get('bad_for')} s); "
                              + "; ".join(a.evidence.get("reasons", [])))
        if self.scn.on_stall != "capture":
            self.capture_info = {"status": "skipped", "reason": f"--on-stall {self.scn.on_stall}"}
            return
        from repro.capture import run as capture_run
        from repro.capture.request import CaptureRequest

        log_path = self.server_log_path()
        events = []
        with contextlib.suppress(OSError, ValueError):
            self.events_f.flush()
            events = [json.loads(x) for x in (self.run_dir / "events.jsonl").read_text().splitlines()[-200:]]
        self.timeline_f.flush()
        req = CaptureRequest(
            out_dir=self.run_dir / "bundle-001", settings=self.scn.capture,
            root_pid=self.server.pid if self.server is not None and self.server.alive() else None,
            url=self.url, api_key=self.scn.api_key, log_path=log_path, docker=self.scn.docker,
            storage_path=self.storage_path(), scenario=self.scenario_dict(), events=events,
            storage_accounting=self.storage_accounting(),
            timeline_csv=self.run_dir / "timeline.csv", detection=detection,
            server_command=self.server_command()[0],
            server_env=self.server.env if self.server is not None else None, reason="stall",
            repro_command=self.scn.invocation)
        self.progress.message(f"capturing into {req.out_dir} ...")
        t0 = time.monotonic()
        try:
            bundle = await asyncio.to_thread(capture_run.capture, req)
        except Exception as exc:  # the capture stage is another module: report, never crash the run
            self.capture_info = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            self.progress.message(f"capture failed: {type(exc).__name__}: {exc}")
        else:
            self.capture_info = {"status": "done", "dir": str(getattr(bundle, "dir", req.out_dir)),
                                 "tarball": str(bundle.tarball) if getattr(bundle, "tarball", None) else None,
                                 "errors": list(getattr(bundle, "errors", []) or []),
                                 "not_packed": getattr(bundle, "not_packed", None)}
            self.progress.message(f"capture written: {self.capture_info['tarball'] or self.capture_info['dir']}"
                                  + (f" (not packed: {self.capture_info['not_packed']})"
                                     if self.capture_info["not_packed"] else ""))
        self.capture_info["seconds"] = round(time.monotonic() - t0, 2)
        self.event("capture", **self.capture_info)

    def storage_path(self) -> str | None:
        if self.connector is not None and not self.connector.writes_files:
            return None
        if self.scn.storage_path:
            return self.scn.storage_path
        if self.server is not None and self.server.settings.extract:
            return self.server.settings.storage
        return None

    def scenario_dict(self) -> dict[str, Any]:
        d = self.scn.to_dict()
        d["server_command"], d["server_command_source"] = self.server_command()
        d["server_log"] = self.server_log_info()
        d["connector"] = (self.connector.to_dict() if self.connector is not None else
                          {"name": None, "note": "attached without --connector: each answer is checked by what it "
                                                 "holds (a file's own dtype and scales, or a handle)"})
        return d

    def server_log_path(self) -> Path | None:
        """The server's log: the launched server's, --log-file, else the attached local server's stdout file."""
        if self.server is not None:
            return self.server.log_path
        if self.scn.log_file:
            return Path(self.scn.log_file)
        if self.attached is not None and self.attached.log_path and not self.scn.docker:
            return Path(self.attached.log_path)
        return None

    def server_log_info(self) -> dict[str, Any]:
        """Where the server's log came from, or why there is none and which flag would have captured it."""
        if self.server is not None:
            return {"path": str(self.server.log_path), "source": "launched by repro"}
        if self.scn.log_file:
            return {"path": self.scn.log_file, "source": "--log-file"}
        if self.scn.docker:
            return {"path": None, "source": f"docker logs {self.scn.docker}"}
        if self.attached is not None:
            return {"path": self.attached.log_path, "source": self.attached.log_note}
        return {"path": None, "source": "not captured: the server is not on this machine; pass --log-file FILE "
                                        "(a copy of its log) or run repro on the server's machine"}

    def server_command(self) -> tuple[list[str] | None, str | None]:
        """(the server's command line, where it came from): launched, /proc of the attached local server, or
        --server-command."""
        if self.server is not None:
            return self.server.command, "launched by repro"
        if self.attached is not None and self.attached.command:
            return self.attached.command, f"/proc/{self.attached.pid}/cmdline"
        if self.scn.server_cmdline:
            return self.scn.server_cmdline, "--server-command"
        return None, None

    def detection_dict(self) -> dict[str, Any] | None:
        a = self.stall
        if a is None:
            return None
        since = a.since if a.since is not None else a.t
        wall_of = (lambda mono: time.time() - (time.monotonic() - mono))
        d = {"class": a.stall_class, "state": a.state,
             "since_s": round(self.rel(since), 3), "detected_s": round(self.rel(a.t), 3),
             "since_wall": _iso(wall_of(since)), "detected_wall": _iso(wall_of(a.t)),
             "detection_delay_s": round(a.t - since, 3), "window_s": self.D.window,
             "evidence": a.evidence, "last_seen": self.last_seen()}
        inj = self.injected()
        if inj:
            first = next((e for e in inj if e.get("event") in ("stall",)), None)
            if first is not None:
                d["injected_wall"] = _iso(first["t"])
                d["detected_after_injection_s"] = round(wall_of(a.t) - first["t"], 3)
        return d

    def last_seen(self) -> dict[str, Any]:
        """What the server last showed before the verdict: for a death, the moment before it went away."""
        m = self.last_metrics
        return {"metrics_wall": None if self.last_metrics_wall is None else _iso(self.last_metrics_wall),
                "metrics": None if m is None else {"running": m.running, "waiting": m.waiting, "kv_usage": m.kv_usage,
                                                   "prompt_tokens_total": m.prompt_tokens,
                                                   "generation_tokens_total": m.generation_tokens},
                "refused_wall": None if self.refused_wall is None else _iso(self.refused_wall),
                "stats_line": self.last_stats_text, "client_in_flight": self.stats.in_flight}

    def injected(self) -> list[dict[str, Any]]:
        p = self.run_dir / "injected.jsonl"
        if self.server is not None and self.server.env.get("REPRO_INJECT_EVENTS"):
            p = Path(self.server.env["REPRO_INJECT_EVENTS"])
        out = []
        with contextlib.suppress(OSError):
            for line in p.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    # -- the run ---------------------------------------------------------------------
    async def main(self) -> None:
        self.stop_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.on_signal, sig)
                installed.append(sig)
            except (RuntimeError, ValueError, NotImplementedError):
                pass  # not the main thread: the caller handles signals
        c = self.L.concurrency
        threads = self.L.check_threads or min(16, max(4, c // 16))  # CPU-bound on local storage: few threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="repro-check")
        prep_pool = ThreadPoolExecutor(1, thread_name_prefix="repro-prompts")
        self.check_slots = asyncio.Semaphore(max(64, 4 * c))
        self.checker = FileChecker(self.L.consume, self.L.keep_budget,
                                   lock_timeout=min(30.0, self.L.request_timeout),
                                   file_wait=0.0 if self.speculators else 10.0,  # speculators moves the file at once
                                   layout=self.connector.output if self.connector is not None else None,
                                   model_dtype=self.model_dtype(),
                                   bad_dir=self.run_dir / BAD_FILES_DIR, bad_budget=self.L.keep_bad_budget)
        self.stats.observer = self.sample_done
        connector = aiohttp.TCPConnector(limit=c, limit_per_host=c, ttl_dns_cache=300)
        mon_connector = aiohttp.TCPConnector(limit=4)
        tasks: list[asyncio.Task[Any]] = []
        mon_task: asyncio.Task[Any] | None = None
        try:
            async with aiohttp.ClientSession(connector=connector) as session, \
                    aiohttp.ClientSession(connector=mon_connector) as mon_session:
                self.model = await self.resolve_model(mon_session)
                prompts = load_prompts_file(self.L.prompts_file) if self.L.prompts_file else None
                self.clip = await self.prompt_clip(mon_session)
                source = PromptSource(self.L.seed, self.clip.used, self.vocab_size(), prompts,
                                      max_prompt=self.clip.max_prompt)
                self.source = source
                feed = PromptFeed(source, Workload.parse(self.L.workload), self.model, self.L.max_tokens,
                                  self.L.seed, buffer=2 * c, executor=prep_pool)
                self.feed = feed
                await feed.start()
                self.open_files()
                self.open_log()
                self.progress.start()
                self.load_t0 = time.monotonic()
                self.event("start", url=self.url, model=self.model, concurrency=c, duration=self.L.duration,
                           requests=self.L.requests, workload=self.L.workload,
                           server_pid=self.server.pid if self.server is not None else None)
                clip_line = self.clip.line() if prompts is None else self.clip.file_line(
                    str(self.L.prompts_file), max((len(p.tokens) for p in prompts if p.tokens is not None), default=0))
                if clip_line:
                    self.event("prompt-clip", message=clip_line, **self.clip.to_dict())
                    self.progress.message(clip_line)
                mon_task = asyncio.ensure_future(self.monitor(mon_session))
                if self.L.rate:
                    tasks = [asyncio.ensure_future(self.arrivals(session, feed))]
                else:
                    tasks = [asyncio.ensure_future(self.worker(session, feed)) for _ in range(c)]
                load = asyncio.ensure_future(asyncio.gather(*tasks))
                stopper = asyncio.ensure_future(self.stop_event.wait())
                sibling = asyncio.ensure_future(self.watch_group()) if self.group_stop is not None else None
                dur = self.L.duration
                done, _ = await asyncio.wait({load, stopper, mon_task}, timeout=dur,
                                             return_when=asyncio.FIRST_COMPLETED)
                if mon_task in done:
                    mon_task.result()  # a bug in the monitor: surface it
                if not done:
                    self.request_stop("duration")
                elif load in done:
                    self.request_stop("requests" if self.L.requests else "done")
                self.load_t1 = time.monotonic()
                if self.stall is not None:
                    await self.on_stall()
                if self.interrupted or self.stall is not None or self.stop_reason in ("rejected", "max-consecutive-errors"):
                    self.checker.abandon.set()  # files a stalled engine never wrote: report them missing now
                    for t in tasks:
                        t.cancel()
                else:  # drain: let in-flight requests finish (bounded)
                    drain = min(self.L.request_timeout, 60.0)
                    _, pending = await asyncio.wait({load}, timeout=drain)
                    if pending:
                        self.event("drain-timeout", in_flight=self.stats.in_flight, seconds=drain)
                        for t in tasks:
                            t.cancel()
                await asyncio.gather(load, return_exceptions=True)
                stopper.cancel()
                if sibling is not None:
                    sibling.cancel()
                # file checks hold no slot: wait for them (bounded by their own timeouts)
                deadline = time.monotonic() + 60.0
                while self.stats.in_check > 0 and time.monotonic() < deadline and not self.interrupted:
                    await asyncio.sleep(0.05)
                await self.settle_storage()
        finally:
            if mon_task is not None:
                mon_task.cancel()
                await asyncio.gather(mon_task, return_exceptions=True)
            if self._probe_task is not None:
                self._probe_task.cancel()
                await asyncio.gather(self._probe_task, return_exceptions=True)
            for sig in installed:
                loop.remove_signal_handler(sig)
            self.pool.shutdown(wait=False, cancel_futures=True)
            prep_pool.shutdown(wait=False, cancel_futures=True)
            self.progress.stop()
            if self.log is not None:
                self.log.close()

    def files_error(self) -> str:
        """The one line that says why a run whose files failed is not clean."""
        st = self.stats
        kinds = ", ".join(f"{k} {n}" for k, n in st.file_errors.most_common(4))
        kept = self.checker.kept_bad() if getattr(self, "checker", None) is not None else {}
        where = (f"; {kept['files']} kept for inspection in {kept['dir']}" if kept.get("files") else "")
        return (f"{st.files_bad} of {st.files_bad + st.files_ok} hidden-state files failed their check or could not "
                f"be verified ({kinds}){where}: the load ran, but its output was not verified")

    def prompts_summary(self) -> dict[str, Any] | None:
        if self.clip is None:
            return None
        d = self.clip.to_dict()
        if self.source is not None and self.source.prompts:
            d["file_prompts_truncated"] = self.source.truncated
        return d

    @property
    def prep_seconds(self) -> float:
        return self.feed.prep_seconds if self.feed is not None else 0.0

    def open_log(self) -> None:
        if self.scn.docker and self.server is None and not self.scn.log_file:
            self.log = DockerLogFollower(self.scn.docker)
            return
        path = self.server_log_path()
        if path is not None:
            self.log = LogFollower(path)

    def on_signal(self, sig: int) -> None:
        if self.interrupted:
            return
        self.interrupted = True
        self.progress.message(f"{signal.Signals(sig).name}: stopping, flushing results ...")
        self.request_stop(signal.Signals(sig).name)


def _summary(run: _Run, res: StressResult, scn: Scenario) -> dict[str, Any]:
    st = run.stats
    load_s = res.load_s
    fid = run.fidelity
    c = scn.load.concurrency
    d: dict[str, Any] = {
        "schema": SUMMARY_SCHEMA, "version": SUMMARY_VERSION,
        "outcome": res.outcome, "exit_code": res.exit_code, "error": res.error,
        "started_at": _iso(run.wall_t0), "ended_at": _iso(time.time()),
        "stop_reason": run.stop_reason,
        "load_seconds": round(load_s, 3), "exposure_seconds": round(res.exposure_s, 3),
        "target": {"url": run.url, "model": run.model, "launched": run.server is not None and run.server.started_at is not None,
                   "server_pid": run.server.pid if run.server is not None else None},
        "requests": res.counts, "files": res.files,
        "tokens": {"prompt": st.prompt_tokens, "completion": st.completion_tokens},
        "throughput": {"requests_per_s": round(st.ok / load_s, 3) if load_s > 0 else None,
                       "prompt_tokens_per_s": round(st.prompt_tokens / load_s, 1) if load_s > 0 else None},
        "latency_s": st.latency.summary(),
        "client_work_s": {"prompt_wait": st.prompt_wait_s.summary(6), "file_check": st.check_s.summary(6),
                          "bookkeeping": st.bookkeeping_s.summary(6), "prompt_prep_total": round(run.prep_seconds, 3)},
        "fidelity": {
            "concurrency": c, "mode": "poisson" if scn.load.rate else "closed-loop",
            "samples": fid.n,
            "mean": None if fid.mean is None else round(fid.mean, 4),
            "p5": None if fid.n == 0 else round(fid.quantile(0.05) or 0.0, 4),
            "client_in_flight_mean": None if run.client_fill.mean is None else round(run.client_fill.mean * c, 3),
            "client_fill_mean": None if run.client_fill.mean is None else round(run.client_fill.mean, 4),
            "definition": "server vllm:num_requests_running + waiting divided by --concurrency, "
                          "sampled every poll while the load runs (first 2 polls excluded)",
            "breakdown": run.breakdown.summary(c),
            "advice": run.breakdown.advice(c),
        },
        "prompts": run.prompts_summary(),
        "detector": {"state": run.last.state if run.last else None,
                     "class": run.last.stall_class if run.last else None,
                     "settings": scn.to_dict()["detect"]},
        "stall": run.detection_dict(),
        "abort_storm": run.storm_summary(),
        "storage": run.storage_summary(),
        "connector": run.scenario_dict()["connector"],
        "client": run.client_summary(),
        "storage_cause": run.storage_death,
        "capture": run.capture_info,
        "log_warnings": run.warnings,
        "files_written": {k: str(v) for k, v in res.paths.items()},
    }
    return d


def run_stress(scenario: Scenario, run_dir: Path, server: VllmServer | None = None,
               progress: Progress | None = None, group_stop: threading.Event | None = None) -> StressResult:
    """Run one stress run into ``run_dir`` and return its result (also written to summary.json).

    ``server``: a running server the caller owns (bisect); otherwise ``scenario.url`` is attached
    to, or a server is launched from ``scenario.server`` and stopped at the end. ``group_stop``:
    an event shared with sibling runs; this run sets it on a stall and ends (clean, stop reason
    ``sibling-stall``) when a sibling sets it. Raises
    UsageError for bad settings; a target that cannot be started or reached is exit code 3 in
    the result (and summary.json), not an exception.
    """
    scenario.validate()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = progress or Progress()
    paths = {name: run_dir / name for name in ("scenario.json", "requests.jsonl", "timeline.csv",
                                               "events.jsonl", "summary.json")}
    if scenario.load.prompts_file:
        prompts = load_prompts_file(scenario.load.prompts_file)  # bad line -> UsageError before anything starts
        if Workload.parse(scenario.load.workload).client == SPECULATORS:
            speculators.check_prompts(prompts, scenario.load.prompts_file)
    owned: VllmServer | None = None
    if server is None and not scenario.url:
        owned = server = VllmServer(scenario.server, run_dir)
    url = scenario.url or (server.url if server is not None else "")
    run = _Run(scenario, run_dir, server, url, progress, group_stop)
    if scenario.storage_path:  # attached (or told): the path must be there now -> UsageError, exit 2
        run.storage = StorageWatch.open(scenario.storage_path, grace=scenario.orphan_grace,
                                        horizon=scenario.storage_horizon)
    result = StressResult(EXIT_OK, "clean", None, 0.0, 0.0, {}, {}, run_dir, paths)
    try:
        try:
            if owned is not None:
                owned.start()
                (run_dir / "scenario.json").write_text(json.dumps(run.scenario_dict(), indent=2, sort_keys=True) + "\n")
                progress.message(f"starting vLLM (log: {owned.log_path}) ...")
                last = [0.0]

                def waiting(elapsed: float) -> None:
                    if elapsed - last[0] >= 15:
                        last[0] = elapsed
                        progress.message(f"  still starting after {elapsed:.0f} s ...")

                owned.wait_ready(on_wait=waiting)
                progress.message(f"vLLM ready at {owned.url} after {owned.ready_at - owned.started_at:.1f} s")  # type: ignore[operator]
            if server is None and url:  # attached: read what a report needs while the server is alive
                run.attached = find_local_server(url)
            if run.storage is None and server is not None and server.settings.extract and run.storage_path():
                run.storage = StorageWatch.open(server.settings.storage, grace=scenario.orphan_grace,
                                                horizon=scenario.storage_horizon)
            (run_dir / "scenario.json").write_text(json.dumps(run.scenario_dict(), indent=2, sort_keys=True) + "\n")
            asyncio_run(run.main())
        except TargetError as exc:
            result.exit_code, result.outcome, result.error = EXIT_TARGET, "target-error", exc.message
        except KeyboardInterrupt:
            run.interrupted = True
        if result.outcome != "target-error":
            if run.interrupted:
                result.exit_code, result.outcome = EXIT_INTERRUPTED, "interrupted"
            elif run.stall is not None:
                result.exit_code, result.outcome = EXIT_STALL, "stall"
            elif run.stop_reason == "rejected":
                result.exit_code, result.outcome, result.error = EXIT_USAGE, "aborted", run.abort_error
            elif run.gave_up is not None:  # speculators' client would have stopped here: the target kept failing
                result.exit_code, result.outcome, result.error = EXIT_TARGET, "client-gave-up", run.abort_error
            elif run.stats.files_bad:
                result.exit_code, result.outcome, result.error = EXIT_FILES, "files-bad", run.files_error()
    finally:
        if owned is not None:
            owned.stop(grace=5.0 if run.stall is not None else 20.0)
        run.close_files()
    t0, t1 = run.load_t0, run.load_t1 or time.monotonic()
    result.load_s = 0.0 if t0 is None else t1 - t0
    result.exposure_s = result.load_s
    if run.stall is not None and t0 is not None and run.stall.since is not None:
        result.exposure_s = max(0.0, run.stall.since - t0)
    result.stall = run.stall
    result.counts = run.stats.counts()
    result.files = run.stats.files()
    if getattr(run, "checker", None) is not None:
        result.files["kept_for_inspection"] = run.checker.kept_bad()
    result.summary = _summary(run, result, scenario)
    paths["summary.json"].write_text(json.dumps(result.summary, indent=2, default=str) + "\n")
    return result


def asyncio_run(coro: Any) -> Any:
    """Run on uvloop when it is installed (vLLM depends on it), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


__all__ = ["StressResult", "run_stress", "SUMMARY_SCHEMA", "SUMMARY_VERSION"]
