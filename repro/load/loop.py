"""Running a coroutine to completion on uvloop when it is installed, on Python 3.10 and later.

``asyncio.Runner`` (the one place that takes a loop factory) is 3.11+; this does what
``asyncio.run`` does -- a fresh loop, the coroutine, then the remaining tasks cancelled, async
generators and the default executor shut down, the loop closed -- on a loop from
``uvloop.new_event_loop`` when uvloop is importable (vLLM depends on it), else asyncio's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not pending:
        return
    for t in pending:
        t.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    for t in pending:
        if not t.cancelled() and t.exception() is not None:
            loop.call_exception_handler({"message": "unhandled exception during shutdown", "exception": t.exception(),
                                         "task": t})


def run(coro: Coroutine[Any, Any, T], loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> T:
    """``asyncio.run(coro)`` on ``loop_factory()`` (default: uvloop's when installed)."""
    loop = (loop_factory or _loop_factory())()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        try:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
