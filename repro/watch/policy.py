"""The restart policy: back-off between restarts, reset after a healthy spell, give up on a storm.

Pure: every method takes the time (seconds on a monotonic clock) so that tests drive it with a
fake clock. The rules (issue 5):

* the first restart happens at once; each further one waits a back-off that starts at
  ``backoff_initial`` (10 s) and doubles up to ``backoff_max`` (5 min);
* ``reset_after`` (10 min) of healthy running resets the back-off to its initial value;
* when ``max_restarts`` restarts already happened within ``period`` (1 h), the next stall is
  not restarted: the watchdog gives up (exit 1).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from repro.errors import UsageError
from repro.options import Flag, check_ranges, setting


@dataclass(frozen=True)
class PolicySettings:
    max_restarts: int = setting(5, flag=Flag(
        "--max-restarts", "Give up (exit 1) when the server stalls again after this many restarts within an hour.",
        type=int, minimum=0))
    backoff_initial: float = setting(10.0, flag=Flag(
        "--backoff", "Wait before the second restart; doubles for each further one.", parse="duration", minimum=0))
    backoff_max: float = setting(300.0, flag=Flag("--backoff-max", "The longest back-off.", parse="duration",
                                                  minimum=0))
    reset_after: float = setting(600.0, flag=Flag(
        "--reset-after", "Healthy time after which the back-off starts from --backoff again.", parse="duration",
        positive=True))
    period: float = 3600.0

    @classmethod
    def from_flags(cls, **kw: float) -> "PolicySettings":
        """The policy the flags ask for: a --backoff above --backoff-max raises the longest back-off to it."""
        if "backoff_initial" in kw:
            kw["backoff_max"] = max(kw.get("backoff_max", cls.backoff_max), kw["backoff_initial"])
        return cls(**kw)  # type: ignore[arg-type]

    def validate(self) -> None:
        check_ranges(self)
        if self.backoff_max < self.backoff_initial:
            raise UsageError("--backoff must be no larger than --backoff-max")
        if self.period <= 0:
            raise UsageError("the restart period must be positive")


class RestartPolicy:
    def __init__(self, settings: PolicySettings | None = None) -> None:
        self.s = settings or PolicySettings()
        self.restarts: deque[float] = deque()  # times of the restarts within the period
        self.backoff = self.s.backoff_initial
        self.healthy_since: float | None = None

    def _expire(self, now: float) -> None:
        while self.restarts and now - self.restarts[0] >= self.s.period:
            self.restarts.popleft()

    def recent_restarts(self, now: float) -> int:
        self._expire(now)
        return len(self.restarts)

    def give_up(self, now: float) -> bool:
        """True when another restart would exceed --max-restarts within the period."""
        return self.recent_restarts(now) >= self.s.max_restarts

    def delay(self, now: float) -> float:
        """Seconds to wait before the next restart (0 for the first one in a calm period)."""
        return 0.0 if self.recent_restarts(now) == 0 else self.backoff

    def record_restart(self, now: float) -> None:
        """A restart was attempted at `now` (after waiting `delay`): the next back-off doubles."""
        if self.restarts:
            self.backoff = min(self.backoff * 2, self.s.backoff_max) if self.backoff > 0 else 0.0
        self.restarts.append(now)
        self.healthy_since = None

    def note_health(self, now: float, healthy: bool) -> None:
        """Called on every evaluation: a long enough healthy spell resets the back-off."""
        if not healthy:
            self.healthy_since = None
            return
        if self.healthy_since is None:
            self.healthy_since = now
        elif now - self.healthy_since >= self.s.reset_after and self.backoff != self.s.backoff_initial:
            self.backoff = self.s.backoff_initial

    def describe(self, now: float) -> dict[str, float | int]:
        return {"restarts_in_period": self.recent_restarts(now), "max_restarts": self.s.max_restarts,
                "next_backoff": self.backoff}
