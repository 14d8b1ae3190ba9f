"""HealthDock's rate limit: a fixed window of requests per API key, and 429 storms."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fake_healthdock.clock import Clock


@dataclass(frozen=True)
class Quota:
    """The outcome of one request against its key's window."""

    allowed: bool
    limit: int | None
    """None when the fake has no rate limit (then only ``Retry-After`` is sent)."""
    remaining: int
    reset: int
    """Epoch seconds at which the window ends (``X-RateLimit-Reset``)."""
    retry_after: int

    def headers(self) -> list[tuple[str, str]]:
        headers = []
        if self.limit is not None:
            headers += [
                ("X-RateLimit-Limit", str(self.limit)),
                ("X-RateLimit-Remaining", str(self.remaining)),
                ("X-RateLimit-Reset", str(self.reset)),
            ]
        if not self.allowed:
            headers.append(("Retry-After", str(self.retry_after)))
        return headers


class FixedWindowLimiter:
    """``limit`` requests per ``window_seconds`` per key; windows are aligned to the epoch, so
    every key's window ends at the same instant."""

    def __init__(self, limit: int, window_seconds: float, clock: Clock) -> None:
        if limit < 1 or window_seconds <= 0:
            raise ValueError("the rate limit needs limit >= 1 and window_seconds > 0")
        self.limit = limit
        self.window_seconds = window_seconds
        self._clock = clock
        self._window = -1
        self._used: dict[str, int] = {}

    def take(self, key: str) -> Quota:
        now = self._clock()
        window = math.floor(now / self.window_seconds)
        if window != self._window:
            self._window = window
            self._used.clear()
        end = (window + 1) * self.window_seconds
        used = self._used.get(key, 0)
        allowed = used < self.limit
        if allowed:
            used += 1
            self._used[key] = used
        return Quota(
            allowed=allowed,
            limit=self.limit,
            remaining=self.limit - used,
            reset=math.ceil(end),
            retry_after=max(1, math.ceil(end - now)),
        )


class Storm:
    """429s whatever a key's own budget, as when another client of the same account has
    exhausted the window (the ``storm_rate`` fault): from :meth:`begin` for ``seconds``."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._until = 0.0

    def begin(self, seconds: float) -> bool:
        """Start a storm now, unless one is on; True when this call started one."""
        now = self._clock()
        if now < self._until:
            return False
        self._until = now + seconds
        return True

    def refusal(self, limit: int | None) -> Quota | None:
        """What a request gets while a storm is on (None when none is): nothing remaining,
        until the storm ends. ``limit``: the fake's rate limit, if it has one."""
        now = self._clock()
        if now >= self._until:
            return None
        return Quota(
            allowed=False,
            limit=limit,
            remaining=0,
            reset=math.ceil(self._until),
            retry_after=max(1, math.ceil(self._until - now)),
        )
