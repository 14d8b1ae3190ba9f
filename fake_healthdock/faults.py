"""Misbehaviour on demand: the ways a real API fails a client, each at a configurable rate.

Every API request draws the same number of values from one seeded generator, whatever is
switched on, so a run with a given seed meets the same faults at the same requests.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from fake_healthdock.overrides import apply_overrides

_ERROR_STATUSES = (500, 502, 503)


@dataclass
class Faults:
    """Fault rates (fractions of API requests), changeable while the fake runs."""

    error_rate: float = 0.0
    """Answered 500, 502 or 503 with the error envelope."""
    latency: tuple[float, float] | None = None
    """Seconds added to each request, drawn from this (min, max) range."""
    reset_rate: float = 0.0
    """Connection dropped without a response."""
    truncate_rate: float = 0.0
    """Body cut short (``Content-Length`` matches the cut body, so the JSON is invalid)."""
    drift_rate: float = 0.0
    """A list request first inserts or deletes a random record, shifting the pages."""

    def __post_init__(self) -> None:
        for name in ("error_rate", "reset_rate", "truncate_rate", "drift_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.latency is not None and not 0.0 <= self.latency[0] <= self.latency[1]:
            raise ValueError("latency must be a (min, max) range of seconds, 0 <= min <= max")

    def updated(self, changes: Mapping[str, object]) -> Faults:
        """A copy with ``changes`` applied (unknown names and bad values raise ValueError)."""
        return apply_overrides(self, changes)


@dataclass(frozen=True)
class Verdict:
    """What happens to one request."""

    delay: float
    reset: bool
    error_status: int | None
    truncate_fraction: float | None
    drift: bool


class FaultDice:
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"healthdock:{seed}:faults")  # noqa: S311 -- reproducible faults

    def roll(self, faults: Faults) -> Verdict:
        draw = [self._rng.random() for _ in range(7)]
        low, high = faults.latency or (0.0, 0.0)
        return Verdict(
            delay=low + (high - low) * draw[0],
            reset=draw[1] < faults.reset_rate,
            error_status=_ERROR_STATUSES[int(draw[3] * 3)] if draw[2] < faults.error_rate else None,
            truncate_fraction=draw[5] if draw[4] < faults.truncate_rate else None,
            drift=draw[6] < faults.drift_rate,
        )
