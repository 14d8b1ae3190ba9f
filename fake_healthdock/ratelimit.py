"""HealthDock's rate limit: a fixed window of requests per API key."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fake_healthdock.clock import Clock


@dataclass(frozen=True)
class Quota:
    """The outcome of one request against its key's window."""

    allowed: bool
    limit: int
    remaining: int
    reset: int
    """Epoch seconds at which the window ends (``X-RateLimit-Reset``)."""
    retry_after: int

    def headers(self) -> list[tuple[str, str]]:
        headers = [
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
