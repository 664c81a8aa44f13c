"""One run's request path spread over several client processes (``--client-procs N``).

One Python process sends, parses, verifies and records about 1,500-2,000 requests/s whatever its
thread count: its event loop and its file-check threads share one interpreter lock. A fast server
on a machine with cores to spare needs more than one process to be held at ``--concurrency``.

What stays in the run's own process (:mod:`repro.load.runner`): the monitor, the detector, the
probe, the store census, events.jsonl, timeline.csv, requests.jsonl and summary.json: one stall
verdict, one record file. What each client process (:func:`worker_main`) has of its own: its share
of ``--concurrency`` (C // N, the first C % N one more), of ``--requests`` and of ``--rate`` (N
Poisson streams of rate/N are one of rate), its aiohttp pool, prompt feed (seed + i; record
``seq`` = i + k * N, so seqs stay unique), file-check threads and a share of the keep budgets. It
sends back in batches (every 50 ms): the finished records' lines, the store claims in the order it
made them, the first bad file of each kind, every 0.25 s a snapshot of its counters (merged with
:meth:`~repro.load.records.RunStats.merged` when the monitor polls, and at the end) and a stop it asks for (every request refused); at the
end its final counters, the bad files it kept and its prompt-building seconds.

The run's process tells the client processes when a stall began (their counts of files the stalled
engine never wrote), and to stop: drain (let requests in flight finish) or abort (cancel them,
give up on files not yet written). Client processes ignore SIGINT (a Ctrl-C reaches the whole
process group): the run's process stops them, so nothing they hold is lost. A client process that
ends without its final batch ends the run with an error naming its exit code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repro.load.records import RunStats

if TYPE_CHECKING:
    from repro.load.limits import PromptClip
    from repro.load.runner import _Run
    from repro.scenario import Scenario
    from repro.server.connectors import Connector

BATCH_S = 0.05  # seconds between a client process's batches
STATS_S = 0.25  # seconds between the counters it puts in a batch (the monitor reads them once per poll)
STOP_DRAIN, STOP_ABORT, STALL = "drain", "abort", "stall"  # messages to a client process


def share(total: int, n: int, i: int) -> int:
    """Client process ``i``'s share of ``total`` split over ``n`` (the first ``total % n`` get one more)."""
    return total // n + (1 if i < total % n else 0)


@dataclass(frozen=True)
class ShardSpec:
    """What one client process needs to send its share of the load (pickled to it)."""

    index: int
    count: int
    scenario: Scenario
    url: str
    model: str
    clip: PromptClip
    vocab_size: int | None
    load_t0: float  # the run's load start (CLOCK_MONOTONIC: the same clock in every process)
    run_dir: Path
    connector: Connector | None
    model_dtype: str | None

    @property
    def concurrency(self) -> int:
        return share(self.scenario.load.concurrency, self.count, self.index)

    def load_settings(self) -> Any:
        L = self.scenario.load
        return dataclasses.replace(
            L, concurrency=self.concurrency,
            requests=None if L.requests is None else share(L.requests, self.count, self.index),
            rate=None if not L.rate else L.rate / self.count,
            keep_budget=L.keep_budget // self.count, keep_bad_budget=L.keep_bad_budget // self.count)


class _Lines:
    """requests.jsonl as a client process sees it: lines collected for the next batch."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, s: str) -> int:
        self.lines.append(s)
        return len(s)

    def flush(self) -> None:
        pass


class _Claims:
    """The store as a client process sees it: claims collected, in order, for the next batch."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bool, bool]] = []

    def claim(self, path: str, forget: bool = False, count: bool = False) -> None:
        self.items.append((path, forget, count))


def worker_main(conn: Connection, spec: ShardSpec) -> None:
    """A client process: its share of the load until the run's process says stop (or goes away)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run's process stops us (a Ctrl-C reaches the group)
    from repro.load import loop as event_loop

    event_loop.run(_Worker(conn, spec).main())
    conn.close()


class _Worker:
    def __init__(self, conn: Connection, spec: ShardSpec) -> None:
        from repro.load.runner import _Run

        self.conn, self.spec = conn, spec
        run = _Run(spec.scenario, spec.run_dir, None, spec.url, None)
        run.L = spec.load_settings()
        run.connector = spec.connector
        run.load_t0 = spec.load_t0
        run.model = spec.model
        run.clip = spec.clip
        self.lines, self.claims = _Lines(), _Claims()
        run.requests_f = self.lines  # type: ignore[assignment]
        run.store = self.claims  # type: ignore[assignment]
        run.announce_bad_file = self.bad_file  # type: ignore[method-assign]
        run.request_stop = self.ask_stop  # type: ignore[method-assign]
        self.run = run
        self.bad: list[dict[str, Any]] = []
        self.bad_seen: set[str] = set()
        self.stop_asked: tuple[str, str | None] | None = None
        self.command: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.stats_sent = 0.0  # monotonic

    # -- what the request path calls (in place of the run's own) ------------------------
    def bad_file(self, f: dict[str, Any]) -> None:
        kind = str(f.get("error") or "?")
        if kind not in self.bad_seen:
            self.bad_seen.add(kind)
            self.bad.append(dict(f))

    def ask_stop(self, reason: str) -> None:
        run = self.run
        if not run.stopping:
            run.stopping, run.stop_reason = True, reason
            self.stop_asked = (reason, run.abort_error)
        run.stop_event.set()

    # -- batches ------------------------------------------------------------------------
    def send(self, final: bool = False) -> None:
        msg: dict[str, Any] = {"lines": self.lines.lines, "claims": self.claims.items, "bad": self.bad}
        self.lines.lines, self.claims.items, self.bad = [], [], []
        now = time.monotonic()
        if final or now - self.stats_sent >= STATS_S:
            msg["stats"], self.stats_sent = self.run.stats, now
        if self.stop_asked is not None:
            msg["stop"], self.stop_asked = self.stop_asked, None
        if final:
            msg["final"] = {"kept_bad": self.run.checker.kept_bad(), "prep_seconds": self.run.prep_seconds}
        self.conn.send(msg)

    async def batches(self) -> None:
        while True:
            await asyncio.sleep(BATCH_S)
            self.send()

    def read_commands(self, loop: asyncio.AbstractEventLoop) -> None:
        """A thread: blocking reads of the run's commands, handed to the loop (a pipe given to the loop's
        add_reader turns non-blocking, and a message read in parts then fails)."""
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):  # the run's process is gone: stop, abandon what is left
                msg = (STOP_ABORT, None)
            try:
                loop.call_soon_threadsafe(self.command.put_nowait, msg)
            except RuntimeError:  # the loop is closed: we are done
                return
            if msg[0] == STOP_ABORT:
                return

    async def main(self) -> None:
        from repro.load.feed import PromptFeed
        from repro.load.prompts import PromptSource, load_prompts_file
        from repro.load.workloads import Workload

        import aiohttp

        run, spec, L = self.run, self.spec, self.run.L
        loop = asyncio.get_running_loop()
        run.stop_event = asyncio.Event()
        c = L.concurrency
        run.set_up_checks(loop, spec.model_dtype)
        prep_pool = ThreadPoolExecutor(1, thread_name_prefix="repro-prompts")
        threading.Thread(target=self.read_commands, args=(loop,), name="repro-commands", daemon=True).start()
        seed = L.seed + spec.index
        tasks: list[asyncio.Task[Any]] = []
        sender = asyncio.ensure_future(self.batches())
        try:
            connector = aiohttp.TCPConnector(limit=c, limit_per_host=c, ttl_dns_cache=300)
            async with aiohttp.ClientSession(connector=connector) as session:
                prompts = load_prompts_file(L.prompts_file) if L.prompts_file else None
                source = PromptSource(seed, spec.clip.used, spec.vocab_size, prompts, max_prompt=spec.clip.max_prompt)
                run.source = source
                feed = PromptFeed(source, Workload.parse(L.workload), spec.model, L.max_tokens, seed, buffer=2 * c,
                                  executor=prep_pool, seq_offset=spec.index, seq_stride=spec.count)
                run.feed = feed
                await feed.start()
                tasks = run.load_tasks(feed, session, seed)
                load = asyncio.ensure_future(asyncio.gather(*tasks))
                how = await self.until_stop(load)
                if how == STOP_DRAIN:
                    drain = min(L.request_timeout, 60.0)
                    waiter = asyncio.ensure_future(self.until_abort())
                    done, _ = await asyncio.wait({load, waiter}, timeout=drain, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    if load not in done:
                        how = STOP_ABORT
                if how == STOP_ABORT:
                    run.checker.abandon.set()
                    for t in tasks:
                        t.cancel()
                await asyncio.gather(load, return_exceptions=True)
                deadline = time.monotonic() + 60.0
                while run.stats.in_check > 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            run.pool.shutdown()
            prep_pool.shutdown(wait=False, cancel_futures=True)
        try:
            self.send(final=True)
        except (BrokenPipeError, OSError):
            pass

    async def until_stop(self, load: asyncio.Future[Any]) -> str:
        """Serve commands until one says stop; the load running out of requests is a drain (it is done)."""
        stopped = asyncio.ensure_future(self.run.stop_event.wait())
        try:
            while True:
                getter = asyncio.ensure_future(self.command.get())
                done, _ = await asyncio.wait({load, getter, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    return STOP_DRAIN  # our budget is spent, or every request was refused (asked the run to stop)
                what, arg = getter.result()
                if what == STALL:
                    self.run.stats.stall_began(arg)
                    continue
                self.run.stopping = True
                return str(what)
        finally:
            stopped.cancel()

    async def until_abort(self) -> None:
        while True:
            what, arg = await self.command.get()
            if what == STALL:
                self.run.stats.stall_began(arg)
            elif what == STOP_ABORT:
                return


class ShardSet:
    """The run's side: starts the client processes, applies their batches to the run, stops them."""

    def __init__(self, run: _Run, specs: list[ShardSpec]) -> None:
        self.run = run
        self.specs = specs
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        self.parts: list[RunStats] = [RunStats() for _ in specs]
        self.final: list[dict[str, Any] | None] = [None] * len(specs)
        self.ended = [False] * len(specs)
        self.finished: asyncio.Future[None]
        self.failure: str | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.finished = loop.create_future()
        ctx = multiprocessing.get_context("spawn")  # the run's process has threads: never fork it
        for spec in self.specs:
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(theirs, spec), name=f"repro-client-{spec.index}", daemon=True)
            p.start()
            theirs.close()
            self.conns.append(mine)
            self.procs.append(p)
            threading.Thread(target=self.read_batches, args=(loop, spec.index), name=f"repro-batches-{spec.index}",
                             daemon=True).start()

    def read_batches(self, loop: asyncio.AbstractEventLoop, i: int) -> None:
        """A thread per client process: blocking reads of its batches, applied on the loop (see read_commands)."""
        conn = self.conns[i]
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                msg = None
            try:
                loop.call_soon_threadsafe(self.end, i) if msg is None else loop.call_soon_threadsafe(self.apply, i, msg)
            except RuntimeError:  # the loop is closed
                return
            if msg is None or "final" in msg:
                return

    def apply(self, i: int, msg: dict[str, Any]) -> None:
        run = self.run
        if msg["lines"]:
            run.requests_f.write("".join(msg["lines"]))
        for path, forget, count in msg["claims"]:
            run.store.claim(path, forget=forget, count=count)
        for f in msg["bad"]:
            run.announce_bad_file(f)
        if "stats" in msg:
            self.parts[i] = msg["stats"]
        if "stop" in msg:
            reason, error = msg["stop"]
            if run.abort_error is None:
                run.abort_error = error
            run.request_stop(reason)
        if "final" in msg:
            self.final[i] = msg["final"]
            self.end(i)

    def end(self, i: int) -> None:
        if self.ended[i]:
            return
        self.ended[i] = True
        if self.final[i] is None and self.failure is None:
            p = self.procs[i]
            p.join(5)
            self.failure = (f"client process {i} of {len(self.specs)} ended before the run did (exit code "
                            f"{p.exitcode}); its records since its last batch are lost: run again with "
                            f"--client-procs 1 to see what it hit")
        if all(self.ended) and not self.finished.done():
            self.merge_stats()  # the final counters: what the summary and the end of the run read
            self.finished.set_result(None)

    def merge_stats(self) -> None:
        """The run's counters from the processes' latest (the monitor calls this once per poll)."""
        run = self.run
        run.stats = RunStats.merged(self.parts)
        if run.stats.stall_since is None and run.stall_began_s is not None:
            run.stats.stall_since = run.stall_began_s  # the processes count it from the stall message on

    async def wait(self) -> None:
        """Until every client process has sent its final batch (or ended)."""
        await asyncio.shield(self.finished)
        if self.failure is not None:
            raise RuntimeError(self.failure)

    def tell(self, what: str, arg: Any = None) -> None:
        for i, conn in enumerate(self.conns):
            if not self.ended[i]:
                try:
                    conn.send((what, arg))
                except (BrokenPipeError, OSError):
                    pass

    def close(self) -> None:
        """Reap the processes (they end on their own once stopped; a straggler is terminated)."""
        self.tell(STOP_ABORT)
        deadline = time.monotonic() + 90.0
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
                p.join(5)
        for c in self.conns:
            c.close()

    @property
    def prep_seconds(self) -> float:
        return sum(f["prep_seconds"] for f in self.final if f)

    def kept_bad(self) -> dict[str, object] | None:
        kept = [f["kept_bad"] for f in self.final if f]
        if not kept:
            return None
        out = dict(kept[0])
        for k in ("files", "bytes", "budget_bytes", "deleted_over_budget"):
            out[k] = sum(int(x.get(k) or 0) for x in kept)  # type: ignore[call-overload]
        return out


def specs(run: _Run, vocab_size: int | None, model_dtype: str | None) -> list[ShardSpec]:
    n = run.L.client_procs
    assert run.load_t0 is not None and run.model is not None and run.clip is not None
    return [ShardSpec(i, n, run.scn, run.url, run.model, run.clip, vocab_size, run.load_t0, run.run_dir,
                      run.connector, model_dtype) for i in range(n)]


__all__ = ["ShardSet", "ShardSpec", "share", "specs", "worker_main"]
