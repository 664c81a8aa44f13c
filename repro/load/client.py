"""The stress client's HTTP side: one request with its retries, and the questions asked of the target.

:meth:`HttpClient.send` posts one prepared request, retrying transport errors, timeouts and
5xx answers up to ``--retries`` times with a back-off (1, 2, 4 ... s; speculators' own 2, 4,
8 ... s) that a stop cuts short. A request the server refuses itself (a 4xx other than 408
and 429) is not retried -- retrying cannot help -- except for the speculators client, which
retries everything as its SDK does. The request's :class:`~repro.load.records.RequestRecord`
gets the attempts, latency, HTTP status and error; the shared
:class:`~repro.load.records.RunStats` counts what the monitor reads while the request runs
(in flight, completions, single-attempt timeouts, retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import aiohttp
import yarl

from repro.errors import TargetError
from repro.load.records import RequestRecord, RunStats
from repro.load.workloads import PreparedRequest

REJECTED = (400, 413, 422)  # the server refused the request itself (too long, invalid): counted apart from errors
NOT_REFUSALS = (408, 429)  # 4xx that mean "later", retried like a 5xx


def transport_error(exc: BaseException, timeout: float) -> tuple[str, str]:
    """(error name, detail) of an attempt that got no HTTP answer."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout", f"no answer within {timeout:g} s (the server aborts it)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        refused = isinstance(exc.os_error, ConnectionRefusedError)
        return ("connection-refused" if refused else "connect"), str(exc)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError)):
        return "disconnected", f"{type(exc).__name__}: {exc}"
    return "client-error", f"{type(exc).__name__}: {exc}"


def http_error(status: int, body: bytes | None) -> tuple[str, str]:
    """(error name, detail) of a non-200 answer: ``http-N``, or ``engine-dead`` when the body says so."""
    detail = (body or b"")[:300].decode("utf-8", "replace")
    if "EngineDeadError" in detail or "EngineCore" in detail:
        return "engine-dead", detail
    return f"http-{status}", detail


class HttpClient:
    """Sends prepared requests to ``url`` with ``headers``; counts into ``stats``."""

    def __init__(self, url: str, headers: dict[str, str], stats: RunStats, request_timeout: float, retries: int,
                 backoff: Callable[[int], float], retry_refusals: bool = False) -> None:
        self.url, self.headers, self.stats = url.rstrip("/"), headers, stats
        self.request_timeout, self.retries, self.backoff = request_timeout, retries, backoff
        self.retry_refusals = retry_refusals
        self.consecutive_refusals = 0  # refused requests in a row (reset by any 200)
        self.timeout = aiohttp.ClientTimeout(total=request_timeout)  # one for the run: every attempt's limit
        self._urls: dict[str, yarl.URL] = {}  # request path -> its parsed URL (parsed once, not per request)

    def _url(self, path: str) -> yarl.URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = yarl.URL(self.url + path)
        return url

    async def send(self, session: aiohttp.ClientSession, prep: PreparedRequest, rec: RequestRecord,
                   stop: asyncio.Event, stopping: Callable[[], bool],
                   on_refused: Callable[[int, str], None] | None = None) -> bytes | None:
        """Post ``prep`` until it is answered 200, refused, out of retries or the run stops; the last body."""
        st = self.stats
        url = self._url(prep.path)
        body: bytes | None = None
        attempt = 0
        while True:
            rec.attempts = attempt + 1
            status = None
            exc: BaseException | None = None
            st.in_flight += 1
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=prep.body, headers=self.headers, timeout=self.timeout) as resp:
                    status = resp.status
                    body = await resp.read()
            except (asyncio.TimeoutError, aiohttp.ClientError) as e:
                exc = e
                if isinstance(e, asyncio.TimeoutError):  # transport_error's "timeout"
                    st.attempt_timeouts += 1
            finally:
                st.in_flight -= 1
            rec.latency = round(time.perf_counter() - t0, 6)
            rec.http_status = status
            if status == 200:
                self.consecutive_refusals = 0
                st.completions += 1
                st.last_completion = time.monotonic()
                rec.status, rec.error, rec.detail = "ok", None, None
                return body
            # the error path: name the failure, then stop or back off and retry
            if status is not None:
                err, detail = http_error(status, body)
            else:
                assert exc is not None
                err, detail = transport_error(exc, self.request_timeout)
            rec.status = "timeout" if err == "timeout" else ("rejected" if status in REJECTED else "error")
            rec.error, rec.detail = err, detail
            if (status is not None and 400 <= status < 500 and status not in NOT_REFUSALS
                    and not self.retry_refusals):
                self.consecutive_refusals += 1
                if on_refused is not None:
                    on_refused(status, detail or "")
                return body  # the request itself is wrong: retrying cannot help
            if stopping() or attempt >= self.retries:
                return body
            st.retries += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.backoff(attempt))
            attempt += 1

    async def model_card(self, session: aiohttp.ClientSession, tries: int = 3) -> dict[str, object]:
        """The first model /v1/models lists (retried ``tries`` times); TargetError when there is none to be had."""
        last = ""
        for attempt in range(tries):
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
                            return dict(models[0])
                        last = "no model listed"
                    else:
                        last = f"HTTP {r.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if attempt < tries - 1:
                await asyncio.sleep(1.0 * (attempt + 1))
        raise TargetError(f"cannot reach the server at {self.url} ({last})",
                          help="Check --url (scheme, host, port) and that vLLM is running: "
                               "curl URL/v1/models should answer 200.")
