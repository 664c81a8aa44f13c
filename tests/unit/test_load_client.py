"""The stress client's HTTP side against a real local aiohttp server: retries, refusals, error names."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from repro.load.client import HttpClient
from repro.load.records import RequestRecord, RunStats
from repro.load.workloads import PreparedRequest

PREP = PreparedRequest(seq=1, kind="chat", path="/v1/completions", body=b"{}", prompt_tokens=None, prompt_len=4)


def run_against(answers: list[Callable[[], Any]], *, retries: int = 3, retry_refusals: bool = False,
                request_timeout: float = 5.0) -> tuple[RequestRecord, RunStats, list[tuple[int, str]], int]:
    """Send PREP once to a server that answers with answers[0], answers[1], ... (the last one repeats)."""
    calls = {"n": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        i = min(calls["n"], len(answers) - 1)
        calls["n"] += 1
        out = answers[i]()
        if asyncio.iscoroutine(out):
            out = await out
        return out

    async def main() -> tuple[RequestRecord, RunStats, list[tuple[int, str]]]:
        app = web.Application()
        app.router.add_post("/v1/completions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        stats, refused = RunStats(), []
        client = HttpClient(f"http://127.0.0.1:{port}", {}, stats, request_timeout, retries, lambda a: 0.0,
                            retry_refusals=retry_refusals)
        rec = RequestRecord(seq=1, kind="chat", t_start=0.0, latency=None, status="error", attempts=0)
        try:
            async with aiohttp.ClientSession() as session:
                await client.send(session, PREP, rec, asyncio.Event(), lambda: False,
                                  lambda status, detail: refused.append((status, detail)))
        finally:
            await runner.cleanup()
        return rec, stats, refused

    rec, stats, refused = asyncio.run(main())
    return rec, stats, refused, calls["n"]


def ok() -> web.Response:
    return web.json_response({"choices": [{"text": "x"}]})


def test_a_5xx_is_retried_until_the_answer_is_200() -> None:
    """503, 503, 200: three attempts, two retries counted, the record ends ok with the 200."""
    rec, stats, refused, calls = run_against([lambda: web.Response(status=503), lambda: web.Response(status=503), ok])
    assert (rec.status, rec.attempts, rec.http_status, calls) == ("ok", 3, 200, 3)
    assert stats.retries == 2 and stats.completions == 1 and stats.in_flight == 0 and refused == []


def test_a_refused_request_is_not_retried_and_is_reported() -> None:
    """400: one attempt, status rejected, the refusal handed to on_refused with the body's text."""
    rec, stats, refused, calls = run_against([lambda: web.Response(status=400, text="prompt too long")])
    assert (rec.status, rec.error, rec.attempts, calls) == ("rejected", "http-400", 1, 1)
    assert refused == [(400, "prompt too long")] and stats.retries == 0


def test_the_speculators_client_retries_refusals_like_its_sdk() -> None:
    """retry_refusals: a 400 is retried like a 5xx, and never reported as a refusal."""
    rec, stats, refused, calls = run_against([lambda: web.Response(status=400), ok], retry_refusals=True)
    assert (rec.status, rec.attempts, calls, refused) == ("ok", 2, 2, [])


def test_an_engine_dead_answer_is_named_engine_dead_after_the_retries() -> None:
    """A 500 whose body names EngineDeadError: error engine-dead, every retry spent."""
    rec, stats, refused, calls = run_against([lambda: web.Response(status=500, text="EngineDeadError: gone")],
                                             retries=2)
    assert (rec.status, rec.error, rec.attempts, calls) == ("error", "engine-dead", 3, 3)


def test_a_timeout_counts_each_attempt_and_ends_as_timeout() -> None:
    """No answer within --request-timeout: every attempt counts in attempt_timeouts; the record is a timeout."""
    async def slow() -> web.Response:
        await asyncio.sleep(2.0)
        return ok()

    rec, stats, refused, calls = run_against([slow], retries=1, request_timeout=0.2)
    assert (rec.status, rec.error, rec.attempts) == ("timeout", "timeout", 2)
    assert stats.attempt_timeouts == 2 and stats.in_flight == 0
