"""When requests start: a closed loop (each of --concurrency workers sends the next at once) or Poisson arrivals.

Both take ``issue`` (the next prepared request, or None when the budget is spent or the
run stops; it waits for a prompt and a file-check slot) and ``one`` (send it and account
for it, given the seconds ``issue`` waited). Neither knows about HTTP or records.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from repro.load.workloads import PreparedRequest

Issue = Callable[[], Awaitable[PreparedRequest | None]]
One = Callable[[PreparedRequest, float], Awaitable[None]]


async def closed_loop(issue: Issue, one: One) -> None:
    """One worker: send, wait for the answer, send the next (run --concurrency of these)."""
    while True:
        t0 = time.perf_counter()
        prep = await issue()
        if prep is None:
            return
        await one(prep, time.perf_counter() - t0)


async def poisson(issue: Issue, one: One, rate: float, concurrency: int, seed: int) -> None:
    """Poisson arrivals at ``rate`` per second, capped at ``concurrency`` in flight; cancelling cancels them all."""
    rng = random.Random(seed + 1)
    cap = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()
    next_t = time.monotonic()
    try:
        while True:
            next_t += rng.expovariate(rate)
            delay = next_t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await cap.acquire()
            t0 = time.perf_counter()
            prep = await issue()
            if prep is None:
                cap.release()
                break
            task = asyncio.ensure_future(one(prep, time.perf_counter() - t0))
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
