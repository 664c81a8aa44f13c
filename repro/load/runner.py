"""The stress run: load generator + monitor + detector, writing a run directory (the orchestration).

:func:`run_stress` is the core entry point (``repro stress`` only parses flags
into a :class:`~repro.scenario.Scenario` and calls it; bisect trials call it
directly). It launches the server unless the scenario has a URL or a server is
passed in, drives the load, polls /metrics and the log once per
``detect.poll_interval``, feeds the :class:`~repro.monitor.detector.Detector`,
and stops on the first stall, at the end of the duration/request budget, or on
SIGINT/SIGTERM. Files in the run directory:

``scenario.json``  ``Scenario.write``: the settings, and a ``ServerRecord`` of the server (command, log, connector)
``requests.jsonl`` one record per request, written as it finishes
``timeline.csv``   one row per poll: client and server counters, the fidelity ratio
``events.jsonl``   detector transitions, capture, stop reasons (:mod:`repro.monitor.events`)
``summary.json``   ``{"schema": "repro.stress.summary", "version": 1, ...}``

The stages live in their own modules; this one wires them to one event loop:

* :mod:`repro.load.client` -- one request with its retries; the /v1/models question
* :mod:`repro.load.checks` -- the threads that run the file checks, results back in batches;
  :mod:`repro.load.codec` -- the answers' and records' JSON (msgspec when importable)
* :mod:`repro.load.arrivals` -- closed loop or Poisson arrivals
* :mod:`repro.load.feed`, :mod:`repro.load.prompts`, :mod:`repro.load.workloads` -- what each request sends
* :mod:`repro.monitor.observe` -- one poll's readings -> the detector's Observation (shared with watch)
* :mod:`repro.load.store` -- the hidden-state store's census and warning episodes; :mod:`repro.load.storms`
  -- abort-storm episodes
* :mod:`repro.load.outputs` -- timeline rows, the display snapshot, summary.json; :mod:`repro.load.stall`
  -- detection.json; :mod:`repro.load.server_facts` -- the server's log, command and store

Why this module is still ~900 lines: what is left is the state one run shares between its
request path (``one`` -> ``handle_ok`` -> the file check's callback, the speculators give-up
rule) and its monitor loop (observe -> detector -> stop, probe, capture on a stall): the same
counters, stop event, check-slot semaphore and thread pools, read and written on one event loop
without locks. Splitting it further would pass that state through every call on the hot path.

Storage (issue 8): with a known storage path (``--storage-path``, or the launched
server's ``--storage``) every returned hidden-state path is claimed, the store is
censused in a thread at a bounded rate, ``storage-warning``
(kind ``storage-leak``/``storage-exhaustion``, ``storage-ok`` when it clears) and
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
import functools
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import aiohttp

from repro.errors import EXIT_FILES, EXIT_INTERRUPTED, EXIT_OK, EXIT_STALL, EXIT_TARGET, EXIT_USAGE, TargetError
from repro.load import arrivals, codec, limits, outputs, stall
from repro.load.checks import CheckPool, default_threads
from repro.load import loop as event_loop
from repro.load.client import HttpClient
from repro.load.display import Progress
from repro.load.feed import PromptFeed
from repro.load.fidelity import Breakdown
from repro.load.outputs import SUMMARY_SCHEMA, SUMMARY_VERSION, TIMELINE_FIELDS, StressResult, iso  # noqa: F401 (re-exported)
from repro.load.prompts import PromptSource, load_prompts_file
from repro.load.server_facts import ServerFacts
from repro.load.store import StoreAccounting
from repro.load.storms import StormTracker
from repro.load.records import NOT_CHECKED, LinearHistogram, RequestRecord, RunStats
from repro.load import shards, speculators
from repro.load.shards import STALL
from repro.hsfiles.checker import CheckResult, FileChecker
from repro.hsfiles.response import read_response
from repro.load.workloads import HIDDEN_STATES, SPECULATORS, PreparedRequest, Workload
from repro.monitor.detector import (CLIENT_STALL, REFUSED, SERVER_DEAD, STALLED, SUSPECT, Assessment,
                                    ClientSnapshot, Detector, Observation)
from repro.monitor.events import EventLog
from repro.monitor.logs import DockerLogFollower, LogFollower
from repro.monitor.metrics import MetricsSample
from repro.monitor.observe import build_observation
from repro.formats import DETECTION_FORMAT, stamp
from repro.scenario import Scenario
from repro.storage.causes import storage_cause
from repro.storage.alerts import StorageWatch
from repro.server.attached import find_local_server
from repro.server import connectors
from repro.server.launcher import VllmServer

BAD_FILES_DIR = "bad-files"  # failing hidden-state files kept for inspection (up to --keep-bad)


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
        self.tokens = outputs.TokenRate()  # tokens/s for the display
        self.events: EventLog | None = None
        self.requests_f: IO[str]
        self.timeline: outputs.Timeline
        self.log: Any = None
        self.warnings: list[str] = []
        self.capture_info: dict[str, Any] | None = None
        self.abort_error: str | None = None
        self.feed: PromptFeed | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._probe_result: tuple[str, int] | None = None
        self._probe_next = 0.0
        self.probes = 0
        # the hidden-state store's census (its watch is set when the path is known)
        self.store = StoreAccounting(None, self.event, self.progress.message, self.rel)
        self.storms = StormTracker(self.event, self.progress.message, self.rel)  # abort-storm episodes
        self.storage_death: dict[str, str] | None = None
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
        self.client = HttpClient(self.url, headers, self.stats, scn.load.request_timeout, scn.load.retries,
                                 self.backoff, retry_refusals=self.speculators)
        # what the server's connector hands back (launched: known; attached: --connector, else read from the answers)
        self.connector: connectors.Connector | None = (
            server.connector if server is not None and server.connector is not None
            else (connectors.resolve(scn.server.connector, gpu=False) if scn.server.connector != connectors.AUTO else None))
        self.handles = 0  # answers naming an object in a store (Mooncake handle), not a file
        self.facts = ServerFacts(scn, server, self.connector)
        self._model_root: str | None = None  # the served model's root (/v1/models), for its vocabulary size
        self.shards: Any = None  # --client-procs > 1: the client processes (repro.load.shards.ShardSet)
        self.stall_began_s: float | None = None  # the declared stall's onset, seconds since the load start

    # -- files -------------------------------------------------------------------
    def open_files(self) -> None:
        self.requests_f = open(self.run_dir / "requests.jsonl", "a", buffering=1 << 16)
        self.events = EventLog(self.run_dir / "events.jsonl", t_is="the load start")
        self.timeline = outputs.Timeline(self.run_dir / "timeline.csv")

    def close_files(self) -> None:
        f = getattr(self, "requests_f", None)
        if f is not None and not f.closed:
            f.flush()
            f.close()
        if self.events is not None:
            self.events.close()
        if getattr(self, "timeline", None) is not None:
            self.timeline.close()

    def event(self, name: str, /, **fields: Any) -> dict[str, Any]:
        """Write an event to events.jsonl (before the file is open: returned, not written); any field name
        (``kind`` included) may be passed."""
        if self.events is not None:
            return self.events.write(name, **fields)
        return {"t": round(self.rel(time.monotonic()), 3), "wall": iso(time.time()), "event": name, **fields}

    def rel(self, mono: float) -> float:
        return mono - (self.load_t0 if self.load_t0 is not None else self.stats.t0)

    # -- target ------------------------------------------------------------------
    async def resolve_model(self, session: aiohttp.ClientSession) -> str:
        if self.L.model_name:
            return self.L.model_name
        card = await self.client.model_card(session)
        root = card.get("root")
        self._model_root = str(root) if root else None
        self._model_card = card
        return str(card["id"])

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

    # -- one request ----------------------------------------------------------------
    async def one(self, session: aiohttp.ClientSession, prep: PreparedRequest, prompt_wait: float) -> None:
        st = self.stats
        assert self.load_t0 is not None
        rec = RequestRecord(seq=prep.seq, kind=prep.kind, t_start=round(time.monotonic() - self.load_t0, 4),
                            latency=None, status="error", attempts=0, prompt_tokens=prep.prompt_len)
        rec.client_s["prompt_wait"] = prompt_wait
        st.prompt_wait_s.add(prompt_wait)
        st.started += 1
        try:
            body = await self.client.send(session, prep, rec, self.stop_event, lambda: self.stopping, self.on_refused)
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

    def on_refused(self, status: int, detail: str) -> None:
        """A request the server refused (4xx): when every request so far was refused, the run stops (exit 2)."""
        if self.client.consecutive_refusals >= max(8, min(64, self.L.concurrency)) and self.stats.ok == 0:
            self.abort_error = f"every request is rejected with HTTP {status}: {detail.strip()[:200]}"
            self.request_stop("rejected")

    def backoff(self, attempt: int) -> float:
        """Seconds before retrying after attempt ``attempt`` (0-based): 1, 2, 4 ...; speculators' 2, 4, 8 ..."""
        return speculators.backoff(attempt + 1) if self.speculators else 2.0 ** attempt

    def handle_ok(self, prep: PreparedRequest, rec: RequestRecord, body: bytes) -> bool:
        """Count the response; submit its file check (True) or finish the record now (False)."""
        st = self.stats
        try:
            data = codec.loads(body)
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
        self.store.claim(info.hs_path, count=True)  # before the check: the client owns it whatever the check finds
        expected = prep.prompt_tokens
        if expected is not None and info.prompt_ids is not None and list(expected) != list(info.prompt_ids):
            rec.file = {"ok": False, "error": "bad-tokens", "detail": "response prompt_token_ids differ from the prompt"}
        if expected is None:
            expected = tuple(info.prompt_ids) if info.prompt_ids is not None else None
        # The check runs in the pool; the concurrency slot is already free when it starts.
        st.in_check += 1
        check = self.check_after_lock if prep.kind == SPECULATORS else self.checker.check
        path = info.hs_path
        self.pool.submit(check, (path, expected, prep.kind in (HIDDEN_STATES, SPECULATORS)),
                         functools.partial(self.check_done, rec, path))
        return True

    def check_done(self, rec: RequestRecord, path: str, r: CheckResult | None, error: BaseException | None) -> None:
        """A file check ended (on the event loop, handed back by the pool): its result into the record, then the
        record finished."""
        st = self.stats
        st.in_check -= 1
        self.check_slots.release()
        if isinstance(error, asyncio.CancelledError):
            rec.file = {"ok": False, "error": NOT_CHECKED, "path": path}
        elif error is not None:
            rec.file = {"ok": False, "error": "check-crashed", "detail": f"{type(error).__name__}: {error}"}
        else:
            assert r is not None
            prev_bad = rec.file
            rec.file = {"ok": r.ok and prev_bad is None, "path": path,
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
                self.store.claim(path, forget=True)
            rec.client_s["check"] = round(r.seconds, 6)
        if rec.file is not None and not rec.file.get("ok"):
            self.announce_bad_file(rec.file)
        st.finish(rec, self.requests_f)

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

    async def issue(self, feed: PromptFeed) -> PreparedRequest | None:
        """The next prepared request, or None when the budget is spent or the run stops."""
        if self.stopping:
            return None
        if self.L.requests is not None and self.issued >= self.L.requests:
            return None
        self.issued += 1
        await self.check_slots.acquire()  # bounded backlog of file checks (back-pressure, normally free)
        return await feed.get()

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
    async def scrape(self, session: aiohttp.ClientSession) -> tuple[str | None, str | None]:
        """GET /metrics -> (text, None) or (None, error) with the detector's error names."""
        try:
            async with session.get(self.url + "/metrics", headers=self.headers,
                                   timeout=aiohttp.ClientTimeout(total=max(2.0, 2 * self.D.poll_interval))) as r:
                if r.status != 200:
                    return None, f"http {r.status}"
                return await r.text(), None
        except asyncio.TimeoutError:
            return None, "timeout"
        except aiohttp.ClientConnectorError as exc:
            return None, REFUSED if isinstance(exc.os_error, ConnectionRefusedError) else "connect"
        except aiohttp.ClientError as exc:
            return None, REFUSED if isinstance(exc, aiohttp.ServerDisconnectedError) else type(exc).__name__

    async def observe(self, session: aiohttp.ClientSession) -> Observation:
        if self.shards is not None:
            self.shards.merge_stats()  # the client processes' latest counters, once per poll
        text, err = await self.scrape(session)
        lines: list[str] = await asyncio.to_thread(self.log.read_lines) if self.log is not None else []
        alive = self.server.alive() if self.server is not None else None
        st = self.stats
        client = ClientSnapshot(in_flight=st.in_flight, completed=st.completions, failed=st.failed,
                                aborted=st.attempt_timeouts)
        probe, self._probe_result = self._probe_result, None
        seen = await asyncio.to_thread(build_observation, time.monotonic(), text, err, lines, alive, client,
                                       probe[0] if probe else None, probe[1] if probe else 0)
        if seen.last_stats_line is not None:
            self.last_stats_text = seen.last_stats_line
        for w in seen.warnings:
            if w.marker not in self.warnings:
                self.warnings.append(w.marker)
                self.event("log-warning", message=w.marker, line=w.line)
        return seen.observation

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
                    self.store.claim(info.hs_path)
                    self.pool.submit(self.checker.discard, (info.hs_path,))
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
            await self.store.poll()
            self.storms.track(a)
            if a.stall_class == SERVER_DEAD and a.state == STALLED:
                self.name_storage_cause(a)
            self.record_sample(ob, a)
            self.maybe_probe(session, a)
            if a.changed:
                self.event("detector", state=a.state, **{"class": a.stall_class},
                           since=None if a.since is None else round(self.rel(a.since), 3),
                           began=None if a.began is None else round(self.rel(a.began), 3),
                           evidence=a.evidence)
            if a.state == STALLED and self.stall is None:
                self.stall = a
                began = round(self.rel(a.began or a.since or a.t), 3)
                self.stall_began_s = began
                self.stats.stall_began(began)  # files it never wrote are not bad
                if self.shards is not None:
                    self.shards.tell(STALL, began)
                self.event("stall", **{"class": a.stall_class}, since=round(self.rel(a.since or a.t), 3),
                           began=began, detected=round(self.rel(a.t), 3), evidence=a.evidence)
                self.request_stop("stall")
                if self.group_stop is not None:
                    self.group_stop.set()
                return  # the verdict stands; what follows (capture, cancelled requests) is not the server's state

    def record_sample(self, ob: Observation, a: Assessment) -> None:
        m = ob.metrics
        st = self.stats
        c = self.L.concurrency
        fid = None if m is None or m.in_server is None else m.in_server / c
        active = (self.load_t0 is not None and self.load_t1 is None and not self.stopping
                  and ob.t - self.load_t0 >= 2 * self.D.poll_interval)
        if active and fid is not None and not self.L.rate:
            self.fidelity.add(fid)
            self.client_fill.add(st.in_flight / c)
        if active and m is not None and m.running is not None and m.waiting is not None:
            self.breakdown.add(st.in_flight, m.running, m.waiting)
        self.tokens.add(ob)
        self.timeline.row(self.rel(ob.t), st, ob, a, fid, self.store.columns())
        self.requests_f.flush()
        self.progress.update(outputs.snapshot(
            st, ob, a, elapsed=self.rel(ob.t) if self.load_t0 is not None else 0.0, duration=self.L.duration,
            concurrency=c, poisson=bool(self.L.rate), tps=self.tokens.value, fidelity=self.fidelity,
            client_fill=self.client_fill, breakdown=self.breakdown, last_progress_t=self.detector.last_progress_t))

    # -- abort storms and the storage summary ------------------------------------------
    def client_summary(self) -> dict[str, Any]:
        """Whose request shape the load had, and (speculators) whether its give-up rule ended the run."""
        if not self.speculators:
            return {"shape": "repro", "workload": self.L.workload, "processes": self.L.client_procs}
        assert self.tracker is not None
        return {"shape": "speculators", "speculators_version": speculators.SPECULATORS_VERSION,
                "request_timeout_s": self.L.request_timeout, "retries": self.L.retries,
                "backoff_s": [speculators.backoff(a) for a in range(1, self.L.retries + 1)],
                "lock_wait_s": speculators.LOCK_TIMEOUT, "max_consecutive_errors": self.tracker.threshold,
                "peak_consecutive_failures": self.tracker.peak, "gave_up": self.gave_up}

    def name_storage_cause(self, a: Assessment) -> None:
        """A dead server whose log shows ENOSPC or another I/O error: put the storage cause in the evidence."""
        if self.storage_death is not None:
            return
        text = ""
        log_path = self.facts.log_path()
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
        handles = max(handles, self.stats.handles)  # counted in the client processes with --client-procs
        return handles > 0 and self.stats.files_ok + self.stats.files_bad == 0

    def no_census(self) -> dict[str, Any]:
        return {"census": None, "applies": False, "handles": self.handles,
                "why": "the connector hands back handles to objects in a Mooncake store, not files: there is no "
                       "file to check and no storage directory to count orphans in (an aborted request's object, "
                       "if the store keeps one, is not visible from here)"}

    def storage_summary(self) -> dict[str, Any] | None:
        if self.hands_back_handles():
            return self.no_census()
        return self.store.summary()

    def storage_accounting(self) -> dict[str, Any] | None:
        """For the bundle (None when the connector hands back handles: no store to count)."""
        return None if self.hands_back_handles() else self.store.accounting()

    # -- on a stall ------------------------------------------------------------------
    async def on_stall(self) -> None:
        a = self.stall
        assert a is not None
        detection = self.detection_dict()
        (self.run_dir / "detection.json").write_text(json.dumps(stamp(DETECTION_FORMAT, detection), indent=2,
                                                                default=str) + "\n")
        self.progress.message(f"STALL detected: {a.stall_class} (bad for {a.evidence.get('bad_for')} s); "
                              + "; ".join(a.evidence.get("reasons", [])))
        if self.scn.on_stall != "capture":
            self.capture_info = {"status": "skipped", "reason": f"--on-stall {self.scn.on_stall}"}
            return
        from repro.capture import run as capture_run
        from repro.capture.request import CaptureRequest

        log_path = self.facts.log_path()
        events = list(self.events.recent[-200:]) if self.events is not None else []
        self.timeline.f.flush()
        req = CaptureRequest(
            out_dir=self.run_dir / "bundle-001", settings=self.scn.capture,
            root_pid=self.server.pid if self.server is not None and self.server.alive() else None,
            url=self.url, api_key=self.scn.api_key, log_path=log_path, docker=self.scn.docker,
            storage_path=self.facts.storage_path(), scenario=self.scn, server_record=self.facts.server_record(), events=events,
            storage_accounting=self.storage_accounting(),
            timeline_csv=self.run_dir / "timeline.csv", detection=detection,
            server_command=self.facts.command()[0],
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

    def detection_dict(self) -> dict[str, Any] | None:
        """detection.json (and summary.json's ``stall``): the verdict, what was seen last, the injection it follows."""
        if self.stall is None:
            return None
        seen = stall.LastSeen(self.last_metrics, self.last_metrics_wall, self.refused_wall, self.last_stats_text,
                              self.stats.in_flight)
        inject = self.run_dir / "injected.jsonl"
        if self.server is not None and self.server.env.get("REPRO_INJECT_EVENTS"):
            inject = Path(self.server.env["REPRO_INJECT_EVENTS"])
        return stall.detection(self.stall, self.rel, self.D.window, seen, stall.read_injected(inject))

    # -- the run ---------------------------------------------------------------------
    def set_up_checks(self, loop: asyncio.AbstractEventLoop, model_dtype: str | None, threads: int | None = None) -> None:
        """The file-check side of the request path (this run's, or one client process's): the pool, the backlog
        bound, the checker."""
        c = self.L.concurrency
        self.pool = CheckPool(loop, threads or self.L.check_threads or default_threads(c))
        self.check_slots = asyncio.Semaphore(max(64, 4 * c))
        self.checker = FileChecker(self.L.consume, self.L.keep_budget,
                                   lock_timeout=min(30.0, self.L.request_timeout),
                                   file_wait=0.0 if self.speculators else 10.0,  # speculators moves the file at once
                                   layout=self.connector.output if self.connector is not None else None,
                                   model_dtype=model_dtype,
                                   bad_dir=self.run_dir / BAD_FILES_DIR, bad_budget=self.L.keep_bad_budget)
        self.check_after_lock = functools.partial(speculators.check_after_lock, self.checker)  # one, not per request

    def load_tasks(self, feed: PromptFeed, session: aiohttp.ClientSession, seed: int) -> list[asyncio.Task[Any]]:
        """The tasks that send the load: Poisson arrivals at --rate, else --concurrency closed-loop workers."""
        issue = functools.partial(self.issue, feed)
        one = functools.partial(self.one, session)
        if self.L.rate:
            return [asyncio.ensure_future(arrivals.poisson(issue, one, self.L.rate, self.L.concurrency, seed))]
        return [asyncio.ensure_future(arrivals.closed_loop(issue, one)) for _ in range(self.L.concurrency)]

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
        sharded = self.L.client_procs > 1
        # with client processes this one checks only the probe's file: one thread
        self.set_up_checks(loop, self.facts.model_dtype(), threads=1 if sharded else None)
        prep_pool = ThreadPoolExecutor(1, thread_name_prefix="repro-prompts")
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
                source = PromptSource(self.L.seed, self.clip.used, self.facts.vocab_size(self._model_root), prompts,
                                      max_prompt=self.clip.max_prompt)
                self.source = source
                feed = PromptFeed(source, Workload.parse(self.L.workload), self.model, self.L.max_tokens,
                                  self.L.seed, buffer=2 * c, executor=prep_pool)
                if not sharded:  # else each client process has a feed of its own
                    self.feed = feed
                    await feed.start()
                self.open_files()
                self.open_log()
                self.progress.start()
                self.load_t0 = self.events.origin if self.events is not None else time.monotonic()
                self.event("start", url=self.url, model=self.model, concurrency=c, duration=self.L.duration,
                           requests=self.L.requests, workload=self.L.workload,
                           server_pid=self.server.pid if self.server is not None else None)
                clip_line = self.clip.line() if prompts is None else self.clip.file_line(
                    str(self.L.prompts_file), max((len(p.tokens) for p in prompts if p.tokens is not None), default=0))
                if clip_line:
                    self.event("prompt-clip", message=clip_line, **self.clip.to_dict())
                    self.progress.message(clip_line)
                mon_task = asyncio.ensure_future(self.monitor(mon_session))
                if sharded:
                    self.shards = shards.ShardSet(self, shards.specs(self, self.facts.vocab_size(self._model_root),
                                                                     self.facts.model_dtype()))
                    self.shards.start()
                    load = asyncio.ensure_future(self.shards.wait())
                else:
                    tasks = self.load_tasks(feed, session, self.L.seed)
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
                    if self.shards is not None:
                        self.shards.tell(shards.STOP_ABORT)
                else:  # drain: let in-flight requests finish (bounded)
                    drain = min(self.L.request_timeout, 60.0)
                    if self.shards is not None:
                        self.shards.tell(shards.STOP_DRAIN)
                    _, pending = await asyncio.wait({load}, timeout=drain)
                    if pending:
                        self.event("drain-timeout", in_flight=self.stats.in_flight, seconds=drain)
                        for t in tasks:
                            t.cancel()
                        if self.shards is not None:
                            self.shards.tell(shards.STOP_ABORT)
                if self.shards is not None:
                    await load  # every client process's final batch (a process that died: its error, here)
                await asyncio.gather(load, return_exceptions=True)
                stopper.cancel()
                if sibling is not None:
                    sibling.cancel()
                # file checks hold no slot: wait for them (bounded by their own timeouts)
                deadline = time.monotonic() + 60.0
                while self.stats.in_check > 0 and time.monotonic() < deadline and not self.interrupted:
                    await asyncio.sleep(0.05)
                await self.store.settle(lambda: self.interrupted)
        finally:
            if mon_task is not None:
                mon_task.cancel()
                await asyncio.gather(mon_task, return_exceptions=True)
            if self._probe_task is not None:
                self._probe_task.cancel()
                await asyncio.gather(self._probe_task, return_exceptions=True)
            for sig in installed:
                loop.remove_signal_handler(sig)
            if self.shards is not None:
                self.shards.close()
            self.pool.shutdown()
            prep_pool.shutdown(wait=False, cancel_futures=True)
            self.progress.stop()
            if self.log is not None:
                self.log.close()

    def files_error(self) -> str:
        """The one line that says why a run whose files failed is not clean."""
        st = self.stats
        kinds = ", ".join(f"{k} {n}" for k, n in st.file_errors.most_common(4))
        kept = self.kept_bad()
        where = (f"; {kept['files']} kept for inspection in {kept['dir']}" if kept.get("files") else "")
        return (f"{st.files_bad} of {st.files_bad + st.files_ok} hidden-state files failed their check or could not "
                f"be verified ({kinds}){where}: the load ran, but its output was not verified")

    def no_work_error(self) -> str:
        """The one line that says why a run in which no request completed is not clean."""
        st, t = self.stats, self.scn.load.request_timeout
        if st.finished == 0:
            return "no request was sent or finished: the load did not run, nothing was tested"
        why = (f"; a --request-timeout of {t:g} s is shorter than the server needs to answer: raise it"
               if st.timeouts == st.finished else "")
        return (f"none of {st.finished} requests completed ({st.timeouts} timed out on the client, {st.failed} failed, "
                f"{st.rejected} rejected): nothing was tested{why}")

    def prompts_summary(self) -> dict[str, Any] | None:
        if self.clip is None:
            return None
        d = self.clip.to_dict()
        if self.source is not None and self.source.prompts:
            d["file_prompts_truncated"] = self.source.truncated
        return d

    @property
    def prep_seconds(self) -> float:
        return (self.feed.prep_seconds if self.feed is not None else 0.0) + (
            self.shards.prep_seconds if self.shards is not None else 0.0)

    def kept_bad(self) -> dict[str, Any]:
        """Failing files kept for inspection: by this process's checker, or the client processes' together."""
        if self.shards is not None:
            return self.shards.kept_bad() or {}
        return self.checker.kept_bad() if getattr(self, "checker", None) is not None else {}

    def open_log(self) -> None:
        if self.scn.docker and self.server is None and not self.scn.log_file:
            self.log = DockerLogFollower(self.scn.docker)
            return
        path = self.facts.log_path()
        if path is not None:
            self.log = LogFollower(path)

    def on_signal(self, sig: int) -> None:
        if self.interrupted:
            return
        self.interrupted = True
        self.progress.message(f"{signal.Signals(sig).name}: stopping, flushing results ...")
        self.request_stop(signal.Signals(sig).name)


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
        run.store.watch = StorageWatch.open(scenario.storage_path, grace=scenario.orphan_grace,
                                        horizon=scenario.storage_horizon)
    result = StressResult(EXIT_OK, "clean", None, 0.0, 0.0, {}, {}, run_dir, paths)
    try:
        try:
            if owned is not None:
                owned.start()
                scenario.write(run_dir / "scenario.json", run.facts.server_record())
                progress.message(f"starting vLLM (log: {owned.log_path}) ...")
                last = [0.0]

                def waiting(elapsed: float) -> None:
                    if elapsed - last[0] >= 15:
                        last[0] = elapsed
                        progress.message(f"  still starting after {elapsed:.0f} s ...")

                owned.wait_ready(on_wait=waiting)
                progress.message(f"vLLM ready at {owned.url} after {owned.ready_at - owned.started_at:.1f} s")  # type: ignore[operator]
            if server is None and url:  # attached: read what a report needs while the server is alive
                run.facts.attached = find_local_server(url)
            if run.store.watch is None and server is not None and server.settings.extract and run.facts.storage_path():
                run.store.watch = StorageWatch.open(server.settings.storage, grace=scenario.orphan_grace,
                                                horizon=scenario.storage_horizon)
            scenario.write(run_dir / "scenario.json", run.facts.server_record())
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
            elif run.stats.ok == 0:  # not one request did its work: nothing was tested, so nothing is clean
                result.exit_code, result.outcome, result.error = EXIT_FILES, "no-work", run.no_work_error()
    finally:
        if owned is not None:
            owned.stop(grace=5.0 if run.stall is not None else 20.0)
        run.close_files()
    t0, t1 = run.load_t0, run.load_t1 or time.monotonic()
    result.load_s = 0.0 if t0 is None else t1 - t0
    result.exposure_s = result.load_s
    onset = None if run.stall is None else (run.stall.began or run.stall.since)
    if onset is not None and t0 is not None:  # load before the stall began: the last observation that was not bad
        result.exposure_s = max(0.0, onset - t0)
    result.stall = run.stall
    result.counts = run.stats.counts()
    result.files = run.stats.files()
    if getattr(run, "checker", None) is not None:
        result.files["kept_for_inspection"] = run.kept_bad()
    result.summary = outputs.summary(run, result, scenario)
    paths["summary.json"].write_text(json.dumps(result.summary, indent=2, default=str) + "\n")
    return result


def asyncio_run(coro: Any) -> Any:
    """Run on uvloop when it is installed (vLLM depends on it), else on asyncio's loop (Python 3.10+)."""
    return event_loop.run(coro)


__all__ = ["StressResult", "run_stress", "SUMMARY_SCHEMA", "SUMMARY_VERSION", "TIMELINE_FIELDS"]
