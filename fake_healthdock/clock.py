"""Time for the fake: an injectable clock and HealthDock's timestamp format."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone

Clock = Callable[[], float]
"""Seconds since the epoch, like :func:`time.time`; tests pass a :class:`ManualClock`."""

IST = timezone(timedelta(hours=5, minutes=30), "IST")


def system_clock() -> float:
    return time.time()


class ManualClock:
    """A clock that moves only when told to, so rate-limit windows and timestamps are exact."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def format_millis(millis: int) -> str:
    """``2024-01-12T10:30:00.123Z`` for a count of milliseconds since the epoch."""
    seconds, ms = divmod(millis, 1000)
    moment = datetime.fromtimestamp(seconds, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms:03d}Z"


def parse_millis(stamp: str) -> int:
    """Milliseconds since the epoch for a timestamp this package wrote."""
    moment = datetime.fromisoformat(stamp)
    return round(moment.timestamp() * 1000)


def ist_date(instant: float) -> date:
    """The calendar date in India at ``instant``: HealthDock's hospitals keep IST."""
    return datetime.fromtimestamp(instant, IST).date()


def ist_midnight(day: date) -> int:
    """Epoch seconds of 00:00 IST on ``day``."""
    return int(datetime(day.year, day.month, day.day, tzinfo=IST).timestamp())
