"""Fixtures for the fake HealthDock's tests."""

from __future__ import annotations

from typing import Any

import pytest

from fake_healthdock import FakeHealthDock, ManualClock
from tests.fake_healthdock.harness import API_KEY, SECRET, MakeFake


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_fake(clock: ManualClock) -> MakeFake:
    """A small fake on the manual clock; keyword arguments override the defaults."""

    def make(**overrides: Any) -> FakeHealthDock:
        options: dict[str, Any] = {
            "seed": 7,
            "patients": 300,
            "api_key": API_KEY,
            "webhook_secret": SECRET,
            "clock": clock,
            **overrides,
        }
        return FakeHealthDock(**options)

    return make
