"""Storage duty of the watchdog (`repro watch --storage PATH`).

watch sends no load of its own, so it cannot know which files a client was
given: a file that stays in the store longer than ``--orphan-grace`` (default
5 min; a consumer normally takes its file within seconds) counts as unclaimed.
Each poll may scan the store (rate-limited by
:class:`~repro.storage.alerts.StorageWatch`); a warning that appears is written
to events.jsonl once per episode (``storage-warning``, and ``storage-ok`` when
it clears; :class:`~repro.storage.episodes.WarningEpisodes`, the tracker ``repro stress``
uses too), counted in the watchdog's Prometheus metrics, and handed to the
``--on-storage`` hook. With ``--reap-orphans-older-than`` files older than
that are deleted (or, with ``--reap-dry-run``, only listed); every deletion is
an event, and nothing outside the store is ever touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from repro.storage.episodes import BEGIN, END, WarningEpisodes
from repro.storage.reaper import reap_orphans
from repro.storage.alerts import StorageWatch


@dataclass
class StorageDuty:
    storage: StorageWatch
    write_event: Callable[..., Any]
    fire_hook: Callable[[dict[str, str]], Any] | None = None
    count_warning: Callable[[str], None] | None = None
    reap_older_than: float | None = None
    reap_dry_run: bool = False
    clock: Callable[[], float] = time.monotonic  # episodes' first_s/last_s: seconds on this clock since the duty began

    def __post_init__(self) -> None:
        self.episodes = WarningEpisodes()
        self._t0 = self.clock()

    @property
    def active(self) -> set[str]:
        return self.episodes.active

    def accounting(self) -> dict[str, Any]:
        """For a bundle: the store's accounting and the warning episodes so far (as stress reports them)."""
        return {**self.storage.accounting(), "warnings": self.episodes.seen}

    def tick(self, force: bool = False) -> list[str]:
        """Scan when due; report new and cleared warnings, reap when asked. Returns the active kinds."""
        if not force and not self.storage.due():
            return sorted(self.active)
        warnings = self.storage.poll(force=True)
        change = self.episodes.update(warnings, round(self.clock() - self._t0, 3))
        for w in change.began:
            self.write_event(BEGIN, kind=w.kind, message=w.message, evidence=w.evidence,
                             path=str(self.storage.census.path))
            if self.count_warning:
                self.count_warning(w.kind)
            if self.fire_hook:
                self.fire_hook({"REPRO_STORAGE_WARNING": w.kind, "REPRO_STORAGE_MESSAGE": w.message,
                                "REPRO_STORAGE_PATH": str(self.storage.census.path)})
        for kind in change.ended:
            self.write_event(END, kind=kind)
        if self.reap_older_than is not None:
            res = reap_orphans(self.storage.census, self.reap_older_than, dry_run=self.reap_dry_run,
                               log=lambda msg: self.write_event("reap", message=msg))
            if res.deleted or res.skipped:
                self.write_event("reap-done", dry_run=self.reap_dry_run, files=len(res.deleted), bytes=res.bytes,
                                 skipped=[f"{n}: {why}" for n, why in res.skipped][:20])
        return sorted(self.active)
