"""Arrivals: the closed loop sends the next request when the previous is answered; Poisson keeps its cap."""

from __future__ import annotations

import asyncio

from repro.load import arrivals
from repro.load.workloads import PreparedRequest


def budget(n: int):
    left = {"n": n}

    async def issue() -> PreparedRequest | None:
        if left["n"] == 0:
            return None
        left["n"] -= 1
        return PreparedRequest(seq=n - left["n"], kind="chat", path="/", body=b"", prompt_tokens=None, prompt_len=1)

    return issue


def recorder(delay: float):
    """A `one` that records the order requests end in and the most that were in flight at once."""
    seen: list[int] = []
    live = {"now": 0, "max": 0}

    async def one(prep: PreparedRequest, waited: float) -> None:
        live["now"] += 1
        live["max"] = max(live["max"], live["now"])
        await asyncio.sleep(delay)
        seen.append(prep.seq)
        live["now"] -= 1

    return one, seen, live


def test_a_closed_loop_worker_sends_one_at_a_time_until_the_budget_is_spent() -> None:
    """One worker, 5 requests: all sent in order, never two in flight."""
    one, seen, live = recorder(0.0)
    asyncio.run(arrivals.closed_loop(budget(5), one))
    assert seen == [1, 2, 3, 4, 5] and live["max"] == 1


def test_poisson_arrivals_never_exceed_the_concurrency_cap() -> None:
    """A high rate with slow answers: at most --concurrency in flight, and every issued request is sent."""
    one, seen, live = recorder(0.01)
    asyncio.run(arrivals.poisson(budget(20), one, rate=10_000.0, concurrency=3, seed=1))
    assert sorted(seen) == list(range(1, 21)) and live["max"] == 3
