"""Prompts prepared ahead of time, off the event loop.

:class:`PromptFeed` keeps a buffer of ready request bodies and refills it in
batches in a worker thread before it runs dry, so no request waits for its
prompt to be built (issue 9: a client that builds 1024-token prompts on its
event loop keeps a fraction of the claimed concurrency in flight).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from concurrent.futures import Executor

from repro.load.prompts import PromptSource
from repro.load.workloads import PreparedRequest, Workload, prepare


class PromptFeed:
    def __init__(self, source: PromptSource, workload: Workload, model: str, max_tokens: int, seed: int,
                 buffer: int, executor: Executor | None = None, batch: int | None = None,
                 seq_offset: int = 0, seq_stride: int = 1) -> None:
        self.source = source
        self.workload = workload
        self.model = model
        self.max_tokens = max_tokens
        self.rng = random.Random(seed ^ 0x5EED)
        self.buffer = max(2, buffer)
        self.batch = batch or max(8, self.buffer // 2)
        self.executor = executor
        self._ready: deque[PreparedRequest] = deque()
        self._pending: asyncio.Future[list[PreparedRequest]] | None = None
        self._seq = 0
        self.seq_offset, self.seq_stride = seq_offset, seq_stride  # one of N client processes: seq = i + k * N
        self.prep_seconds = 0.0  # thread time spent preparing (client-side work)
        self.prepared = 0

    def _make_batch(self, start: int, n: int) -> tuple[list[PreparedRequest], float]:
        t0 = time.perf_counter()
        out = []
        for i in range(n):
            kind = self.workload.pick(self.rng)
            out.append(prepare(self.seq_offset + (start + i) * self.seq_stride, self.source.next(), kind, self.model,
                               self.max_tokens))
        return out, time.perf_counter() - t0

    def _refill(self) -> None:
        if self._pending is None and len(self._ready) < self.buffer:
            loop = asyncio.get_running_loop()
            start, n = self._seq, self.batch
            self._seq += n
            fut = loop.run_in_executor(self.executor, self._make_batch, start, n)
            self._pending = asyncio.ensure_future(self._collect(fut))

    async def _collect(self, fut: "asyncio.Future[tuple[list[PreparedRequest], float]]") -> list[PreparedRequest]:
        items, secs = await fut
        self._ready.extend(items)
        self.prep_seconds += secs
        self.prepared += len(items)
        self._pending = None
        self._refill()
        return items

    async def start(self) -> None:
        """Fill the buffer before the load starts."""
        while len(self._ready) < self.buffer:
            self._refill()
            if self._pending is not None:
                await asyncio.shield(self._pending)

    async def get(self) -> PreparedRequest:
        while not self._ready:
            self._refill()
            if self._pending is not None:
                await asyncio.shield(self._pending)
        item = self._ready.popleft()
        self._refill()
        return item
