"""The reconcile lease between jobs of one process (full, retry, upcoming share a scheduler)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Engine

from mirror.database import write_transaction
from mirror.leases import lease_holder
from sync import LeaseHeld, job


def test_two_jobs_of_one_process_exclude_each_other(engine: Engine) -> None:
    async def scenario() -> None:
        async with job._lease(engine, ttl_seconds=60):
            first = write_transaction(engine, lambda c: lease_holder(c, job.LEASE))
            with pytest.raises(LeaseHeld):
                async with job._lease(engine, ttl_seconds=60):
                    pass  # pragma: no cover (must not be reached)
            # The refused job released nothing: the first still holds the lease.
            assert write_transaction(engine, lambda c: lease_holder(c, job.LEASE)) == first
        assert write_transaction(engine, lambda c: lease_holder(c, job.LEASE)) is None

    asyncio.run(scenario())
