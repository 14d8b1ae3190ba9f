"""A mirror filled by one pass of ours, the starting point of the floors' tests."""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine

from mirror import Resource
from sync.client import HealthDockClient
from sync.passes import PassOptions
from sync.reconcile import reconcile


def fill_patients(engine: Engine, base_url: str, api_key: str) -> None:
    """Reconcile every patient the fake at ``base_url`` lists into ``engine``'s mirror."""

    async def fill() -> None:
        async with HealthDockClient(f"{base_url}/v1", api_key) as api:
            await reconcile(engine, api, Resource.PATIENT, PassOptions(concurrency=4))

    asyncio.run(fill())
