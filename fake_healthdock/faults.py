"""Misbehaviour on demand: the ways a real API fails a client, each at a configurable rate.

Every API request draws the same number of values from each seeded generator, whatever is
switched on, so a run with a given seed meets the same faults at the same requests. Latency
spikes and 429 storms draw from a second generator, so adding them did not change which
faults a seed meant before.
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
    spike_rate: float = 0.0
    """A latency spike: the request is held ``spike_seconds`` more (on top of ``latency``),
    long enough for a client's timeout to fire."""
    spike_seconds: float = 2.0
    storm_rate: float = 0.0
    """A 429 storm begins, as when another client of the same account exhausts the window:
    for ``storm_seconds`` every API request is answered 429 whatever its own budget, with
    ``Retry-After`` (and ``X-RateLimit-Reset``) at the storm's end."""
    storm_seconds: float = 1.0

    def __post_init__(self) -> None:
        rates = ("error_rate", "reset_rate", "truncate_rate", "drift_rate", "spike_rate",
                 "storm_rate")  # fmt: skip
        for name in rates:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.latency is not None and not 0.0 <= self.latency[0] <= self.latency[1]:
            raise ValueError("latency must be a (min, max) range of seconds, 0 <= min <= max")
        if self.spike_seconds < 0.0:
            raise ValueError("spike_seconds must be 0 or more")
        if self.storm_seconds <= 0.0:
            raise ValueError("storm_seconds must be more than 0")

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
    spike: bool
    """``delay`` includes a latency spike."""
    storm: bool
    """This request begins a 429 storm (unless one is on already)."""


class FaultDice:
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"healthdock:{seed}:faults")  # noqa: S311 -- reproducible faults
        self._bursts = random.Random(f"healthdock:{seed}:bursts")  # noqa: S311 -- likewise

    def roll(self, faults: Faults) -> Verdict:
        draw = [self._rng.random() for _ in range(7)]
        burst = [self._bursts.random() for _ in range(2)]
        low, high = faults.latency or (0.0, 0.0)
        spike = burst[0] < faults.spike_rate
        return Verdict(
            delay=low + (high - low) * draw[0] + (faults.spike_seconds if spike else 0.0),
            reset=draw[1] < faults.reset_rate,
            error_status=_ERROR_STATUSES[int(draw[3] * 3)] if draw[2] < faults.error_rate else None,
            truncate_fraction=draw[5] if draw[4] < faults.truncate_rate else None,
            drift=draw[6] < faults.drift_rate,
            spike=spike,
            storm=burst[1] < faults.storm_rate,
        )
