"""The threads that run the file checks of one event loop, results handed back in batches.

The event loop puts each check on one queue the worker threads share (no future per check); a worker
takes the next check as soon as it is free, so a check that waits for its file or its lock holds up no
other. Results go to one list, and the loop is woken once per batch of them (one
``call_soon_threadsafe`` for every result that arrived before the loop ran the last wake-up), not once per
check with a ``run_in_executor`` future, its asyncio wrapper and a done-callback. The callbacks run on
the event loop, in the order the checks ended.

The threads hold the event loop's GIL while they parse and verify, so more of them than cores only adds
hand-offs: :func:`default_threads` caps the pool near the core count.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

#: a check's callback: (result, None) when it returned, (None, exception) when it raised, or
#: (None, asyncio.CancelledError()) when the pool was shut down before it started
Done = Callable[[Any, "BaseException | None"], None]


def cores() -> int:
    """CPUs this process may run on (its affinity mask; os.cpu_count() where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(concurrency: int, n_cores: int | None = None) -> int:
    """Check threads when --check-threads is not given: concurrency/16 within 4..16, and no more than the
    cores (4 at least: a few checks may sleep on a file or a lock while the others run)."""
    n = n_cores if n_cores is not None else cores()
    return min(16, max(4, concurrency // 16), max(4, n))


class CheckPool:
    """``threads`` worker threads running checks for the event loop ``loop``; call :meth:`shutdown` when done
    (the threads are not daemons)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int, name: str = "repro-check") -> None:
        if threads < 1:
            raise ValueError(f"a check pool needs at least one thread, not {threads}")
        self.loop = loop
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Done | None] | None] = \
            queue.SimpleQueue()
        self._results: deque[tuple[Done, Any, BaseException | None]] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False  # a deliver() is scheduled on the loop and has not begun
        self._closed = False
        self.wakeups = 0  # call_soon_threadsafe calls made (one per batch of results)
        self.delivered = 0  # results handed to their callbacks
        # not daemons (as a ThreadPoolExecutor's): a check running when the process exits finishes its file
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}") for i in range(threads)]
        for t in self._threads:
            t.start()

    @property
    def threads(self) -> int:
        return len(self._threads)

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], done: Done | None = None) -> None:
        """Run ``fn(*args)`` in a worker; ``done(result, error)`` later on the loop (event loop thread only)."""
        if self._closed:
            raise RuntimeError("the check pool is shut down")
        self._jobs.put((fn, args, done))

    def _work(self) -> None:
        jobs, results = self._jobs, self._results
        while True:
            job = jobs.get()
            if job is None:
                return
            fn, args, done = job
            try:
                res, err = fn(*args), None
            except BaseException as exc:  # handed to the callback (check-crashed), never lost in a thread
                res, err = None, exc
            if done is None:
                continue
            results.append((done, res, err))
            with self._lock:
                if self._wake_pending:
                    continue  # the scheduled deliver() has not begun: it takes this result too
                self._wake_pending = True
                self.wakeups += 1
            try:
                self.loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop is closed: nobody is left to tell
                return

    def _deliver(self) -> None:
        with self._lock:
            self._wake_pending = False  # from here on a new result schedules another deliver()
        results = self._results
        while results:
            done, res, err = results.popleft()
            self.delivered += 1
            try:
                done(res, err)
            except Exception as exc:  # one bad callback must not strand the rest of the batch
                self.loop.call_exception_handler({"message": "file check callback failed", "exception": exc})

    def shutdown(self) -> None:
        """Stop taking checks: the ones not begun are cancelled (their callbacks told now, on the loop); running
        ones finish in their threads and are delivered if the loop still runs; the threads then end."""
        if self._closed:
            return
        self._closed = True
        pending = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                pending.append(job)
        for _ in self._threads:
            self._jobs.put(None)
        for _fn, _args, done in pending:
            if done is not None:
                try:
                    done(None, asyncio.CancelledError())
                except Exception as exc:
                    self.loop.call_exception_handler({"message": "file check callback failed", "exception": exc})
