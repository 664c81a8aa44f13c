"""Storage-warning episodes: one event when a warning begins, one when it clears, for stress and watch alike.

A :class:`~repro.storage.alerts.StorageWatch` scan returns the warnings that hold *now*;
:class:`WarningEpisodes` turns that stream into episodes (a warning that holds on ten scans
in a row is one episode, not ten) and keeps, per kind, when it was first and last seen, how
many scans showed it and its last message and evidence (``summary.json``'s
``storage.warnings``). Both commands write the same events: ``storage-warning`` (with
``kind``, ``message``, ``evidence``, ``path``) when an episode begins and ``storage-ok``
(with ``kind``) when it ends. Files written by an earlier repro used the kind itself as the
event name in stress (``storage-leak``, ``storage-leak-end``); readers accept both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from repro.storage.alerts import StorageWarning

BEGIN, END = "storage-warning", "storage-ok"  # the event names, in stress and watch


@dataclass
class Change:
    """What one scan changed: warnings whose episode began, kinds whose episode ended (sorted)."""

    began: list[StorageWarning] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)


@dataclass
class WarningEpisodes:
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> first_s, last_s, count, message, evidence
    active: set[str] = field(default_factory=set)

    def update(self, warnings: list[StorageWarning], t: float) -> Change:
        """The warnings that hold after a scan at ``t`` (seconds, the caller's clock) -> what began and ended."""
        now = {w.kind for w in warnings}
        out = Change()
        for w in warnings:
            rec = self.seen.setdefault(w.kind, {"first_s": t, "count": 0})
            rec.update(last_s=t, message=w.message, evidence=w.evidence)
            rec["count"] += 1
            if w.kind not in self.active and all(b.kind != w.kind for b in out.began):
                out.began.append(w)
        out.ended = sorted(self.active - now)
        self.active = now
        return out
