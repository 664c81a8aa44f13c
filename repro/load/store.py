"""The hidden-state store during a stress run: claims, bounded-rate scans, warning episodes, the accounting.

With a known store path every hidden-state path a response returns is claimed (before its
file check: the client owns it whatever the check finds); the store is censused in a
thread at the rate :class:`~repro.storage.alerts.StorageWatch` allows; warnings become
episodes (:class:`~repro.storage.episodes.WarningEpisodes`, the tracker ``repro watch``
uses too, with the same ``storage-warning`` / ``storage-ok`` events). At the end of the run
:meth:`StoreAccounting.settle` waits for late writes and takes the final census with no
grace. :meth:`summary` is ``summary.json``'s ``storage``; :meth:`accounting` is the bundle's.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from repro.storage.census import DATA_SUFFIX
from repro.storage.episodes import BEGIN, END, WarningEpisodes
from repro.storage.alerts import StorageWatch


class StoreAccounting:
    def __init__(self, watch: StorageWatch | None, event: Callable[..., Any], say: Callable[[str], None],
                 rel: Callable[[float], float]) -> None:
        self.watch = watch  # None: no store path known (or the store went away)
        self.event, self.say, self.rel = event, say, rel
        self.episodes = WarningEpisodes()
        self.claims_made = 0
        self.scans_total = 0
        self._scanning = False  # a census scan runs in a thread: claims/forgets wait in _queue meanwhile
        self._queue: list[tuple[bool, str]] = []

    def claim(self, path: str, forget: bool = False, count: bool = False) -> None:
        """Claim (or forget) a returned hidden-state path; queued while a scan runs in its thread (event loop only)."""
        if self.watch is None:
            return
        if count:
            self.claims_made += 1
        if self._scanning:
            self._queue.append((forget, path))
        elif forget:
            self.watch.forget(path)
        else:
            self.watch.claim(path)

    async def poll(self, force: bool = False) -> None:
        """Scan the store when due (StorageWatch rate-limits itself) and log its warning episodes as events.

        The scan runs in a thread (a rescan of 200,000 files takes most of a second): claims and forgets that
        arrive meanwhile are queued and applied after it, in order."""
        w = self.watch
        if w is None or not (force or w.due()):
            return
        before = w.last
        self._scanning = True
        try:
            warnings = await asyncio.to_thread(w.poll, force)
        except OSError as exc:  # the store went away under us: say so once, never crash the run
            self.event("storage-error", error=f"{type(exc).__name__}: {exc}")
            self.watch = None
            return
        finally:
            self._scanning = False
            queued, self._queue = self._queue, []
            for forget, path in queued:
                (w.forget if forget else w.claim)(path)
        if w.last is before:
            return  # not due
        self.scans_total += 1
        change = self.episodes.update(warnings, round(self.rel(time.monotonic()), 3))
        for warn in change.began:  # one event per episode, not per scan
            self.event(BEGIN, kind=warn.kind, message=warn.message, evidence=warn.evidence, path=str(w.census.path))
            self.say(f"warning: {warn.kind}: {warn.message}")
        for kind in change.ended:
            self.event(END, kind=kind)

    def columns(self) -> list[Any]:
        """timeline.csv's orphan_files, store_bytes, fs_free_bytes (None until the first scan)."""
        last = self.watch.last if self.watch is not None else None
        if last is None:
            return [None, None, None]
        return [last.orphan_files, last.bytes, last.fs_free_bytes]

    def _figures(self, w: StorageWatch, sample: int, curve: bool) -> dict[str, Any]:
        """The store's accounting (:meth:`StorageWatch.accounting`) plus what only the client knows."""
        hist = list(w.census.history)
        d = w.accounting(sample=sample, curve=curve)
        d.update({"scans": len(hist),  # history is bounded; total scans below
                  "scans_total": self.scans_total,
                  "scan_seconds_total": round(sum(s.scan_seconds for s in hist), 6),
                  "scan_seconds_max": round(max((s.scan_seconds for s in hist), default=0.0), 6),
                  "warnings": self.episodes.seen})
        if w.last is not None:
            d["claims_made"] = self.claims_made
        return d

    def summary(self) -> dict[str, Any] | None:
        """summary.json's ``storage``: the figures, rates and projection, 10 orphans by name."""
        return None if self.watch is None else self._figures(self.watch, 10, curve=False)

    def accounting(self) -> dict[str, Any] | None:
        """For the bundle: the summary's figures with 50 orphans by name and the growth curve."""
        return None if self.watch is None else self._figures(self.watch, 50, curve=True)

    async def settle(self, stopped: Callable[[], bool]) -> None:
        """End of the run: wait for late writes (vLLM writes an aborted request's file after the abort), then take
        the final census with no grace -- no response can claim a file any more, so every unclaimed file is an orphan."""
        w = self.watch
        if w is None:
            return

        def count() -> int:
            try:
                return sum(1 for n in os.listdir(w.census.path) if n.endswith(DATA_SUFFIX))
            except OSError:
                return -1

        deadline = time.monotonic() + min(15.0, max(2.0, w.census.grace))
        prev, stable_since = await asyncio.to_thread(count), time.monotonic()
        while time.monotonic() < deadline and not stopped():
            await asyncio.sleep(0.5)
            n = await asyncio.to_thread(count)
            if n != prev:
                prev, stable_since = n, time.monotonic()
            elif time.monotonic() - stable_since >= 3.0:
                break
        grace = w.census.grace
        w.census.grace = 0.0
        try:
            await self.poll(force=True)
        finally:
            w.census.grace = grace
        if w.last is not None:
            self.event("storage-final", files=w.last.files, claimed=w.last.claimed_files,
                       orphans=w.last.orphan_files, orphan_bytes=w.last.orphan_bytes)
