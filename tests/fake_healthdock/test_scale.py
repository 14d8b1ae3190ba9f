"""A million patients: modest memory, and any page served quickly."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from typing import Any

from fake_healthdock import FakeHealthDock, ManualClock
from tests.fake_healthdock.harness import API_KEY, client


def test_a_million_patients_fit_and_page_10000_is_quick() -> None:
    tracemalloc.start()
    try:
        started = time.perf_counter()
        fake = FakeHealthDock(seed=1, patients=1_000_000, api_key=API_KEY, clock=ManualClock())
        built = time.perf_counter() - started
        fake.mutate(200)

        async def scenario() -> tuple[float, list[dict[str, Any]]]:
            async with client(fake) as api:
                started = time.perf_counter()
                response = await api.get("/v1/patients", params={"page": 10_000, "limit": 100})
                elapsed = time.perf_counter() - started
                return elapsed, [response.json()["data"]]

        elapsed, [data] = asyncio.run(scenario())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert data["pagination"]["total_count"] == fake.counts()["patients"]
    assert len(data["patients"]) == 100
    assert data["patients"][0]["id"] == fake.store.patients.slice(999_900, 1)[0].id
    assert built < 5.0
    assert elapsed < 0.5
    assert peak < 300 * 2**20
