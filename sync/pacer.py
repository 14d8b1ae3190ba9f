"""Pacing requests from HealthDock's rate-limit headers.

HealthDock announces a fixed window: ``X-RateLimit-Limit`` requests, ``X-RateLimit-Remaining``
of them left, until ``X-RateLimit-Reset`` (epoch seconds). The pacer spreads our requests
evenly over what is left of the window, keeping a share of the limit free for the hospital's
other HealthDock clients, so that a pass never draws a 429 in normal operation and does not
burst through the budget at the start of a window either. Pure arithmetic: the caller owns
the clock and the sleeping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateLimit:
    """What one response said about the window."""

    limit: int
    remaining: int
    reset_at: float  # epoch seconds


def read_rate_limit(headers: Mapping[str, str]) -> RateLimit | None:
    """The window from a response's headers, or None when they are absent or unreadable."""
    try:
        return RateLimit(
            limit=int(headers["x-ratelimit-limit"]),
            remaining=int(headers["x-ratelimit-remaining"]),
            reset_at=float(headers["x-ratelimit-reset"]),
        )
    except (KeyError, ValueError):
        return None


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait after a 429: ``Retry-After``, else until ``X-RateLimit-Reset``."""
    try:
        return max(0.0, float(headers["retry-after"]))
    except (KeyError, ValueError):
        pass
    window = read_rate_limit(headers)
    return None if window is None else max(0.0, window.reset_at - now)


class Pacer:
    """Decides when the next request may go.

    ``reserve`` is the share of the limit left for other clients (0.2 keeps 20% of every
    window free). In a window whose budget is unknown (at the start, and once a window has
    reset) one request goes alone, and the rest wait for its answer's headers: another
    client may have spent the new window already, and ``concurrency`` requests sent blind
    could overdraw it. An API that answers without rate-limit headers announces no budget:
    then nothing is paced (a 429's pause still holds) until an answer announces one again.
    """

    def __init__(self, reserve: float) -> None:
        if not 0 <= reserve < 1:
            raise ValueError("reserve must be in [0, 1)")
        self._reserve = reserve
        self._window: RateLimit | None = None
        # Sent and not yet answered: the server may not have counted them in what we know.
        self._in_flight = 0
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._probing = False  # the one request of an unknown window is unanswered
        self._ended_at = float("-inf")  # the reset of the last window known to have ended
        # The latest answer carried no rate-limit headers: the API announces no budget.
        self._unannounced = False

    def settle(self, window: RateLimit | None, *, answered: bool = True) -> None:
        """A request claimed with :meth:`reserve_slot` ended: answered (with ``window``, if
        its headers said one), or not (``answered=False``: it failed or was cancelled).

        Answers can arrive out of order: within one window the smallest ``remaining`` is the
        freshest, and a window that ends earlier than the one we know is over.
        """
        self._in_flight = max(0, self._in_flight - 1)
        if window is None:
            # The probe, if it was, failed or said nothing: another request may try (a lone
            # one again), unless the API answered without announcing a budget at all.
            self._probing = False
            if answered and self._window is None:
                self._unannounced = True
            return
        self._unannounced = False
        if window.reset_at <= self._ended_at:
            return  # a late answer from a window that has ended says nothing about this one
        self._probing = False
        if _fresher(window, self._window):
            self._window = window

    def pause_until(self, moment: float) -> None:
        """After a 429: send nothing before ``moment``."""
        self._paused_until = max(self._paused_until, moment)

    def reserve_slot(self, now: float) -> float | None:
        """Claim the next request slot: how many seconds to wait before sending, or None
        when the window's budget is unknown and its one probing request is unanswered
        (ask again after the next :meth:`settle`)."""
        start = max(now, self._paused_until, self._next_slot)
        window = self._window
        if window is not None and start >= window.reset_at:
            # A new window has begun: its budget is unknown until the next response.
            self._forget(window)
            window = None
        if window is None:
            if self._unannounced:
                self._in_flight += 1
                return start - now
            if self._probing:
                return None
            return self._probe(start, now)
        usable = window.remaining - self._in_flight - self._reserve * window.limit
        if usable < 1:
            # Nothing left that is ours in this window: probe the next one when it begins.
            self._forget(window)
            if self._probing:
                return None
            return self._probe(window.reset_at, now)
        interval = (window.reset_at - start) / usable
        self._in_flight += 1
        self._next_slot = start + interval
        return start - now

    def _forget(self, window: RateLimit) -> None:
        self._window = None
        self._ended_at = max(self._ended_at, window.reset_at)
        self._probing = False

    def _probe(self, start: float, now: float) -> float:
        self._probing = True
        self._in_flight += 1
        self._next_slot = start
        return start - now


def _fresher(window: RateLimit, known: RateLimit | None) -> bool:
    if known is None or window.reset_at > known.reset_at:
        return True
    return window.reset_at == known.reset_at and window.remaining < known.remaining
