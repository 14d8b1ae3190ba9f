"""The reconcile job: what ``healthdock-mirror sync`` and the scheduler run.

It takes the reconcile lease (one reconcile at a time across every process sharing the
database), keeps renewing it while passes run, runs one pass per resource, and releases it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import date

import httpx
from sqlalchemy import Engine

from config import Settings
from mirror.database import DatabaseUnavailable, write_transaction
from mirror.events import Resource
from sync import runs
from sync.client import HealthDockClient
from sync.reconcile import PassOptions, PassResult, Progress, reconcile, refresh

log = logging.getLogger(__name__)

LEASE = "reconcile"


class LeaseHeld(Exception):
    """Another process is reconciling; the message names it."""


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def pass_options(settings: Settings, *, allow_mass_delete: bool = False) -> PassOptions:
    return PassOptions(
        page_size=settings.sync_page_size,
        concurrency=settings.sync_concurrency,
        mass_delete_share=settings.sync_mass_delete_share,
        mass_delete_floor=settings.sync_mass_delete_floor,
        allow_mass_delete=allow_mass_delete,
    )


def api_client(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> HealthDockClient:
    if settings.api_key is None:
        raise ValueError("HEALTHDOCK_API_KEY: needed to read HealthDock's API")
    return HealthDockClient(
        settings.api_url,
        settings.api_key.get_secret_value(),
        reserve=settings.sync_rate_reserve,
        timeout_seconds=settings.api_timeout_seconds,
        attempts=settings.api_attempts,
        transport=transport,
    )


async def run_reconcile(
    settings: Settings,
    engine: Engine,
    resources: Sequence[Resource],
    *,
    allow_mass_delete: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    progress: Callable[[Resource], Progress] | None = None,
) -> list[PassResult]:
    """One pass per resource under the lease; raises LeaseHeld if another process has it."""
    options = pass_options(settings, allow_mass_delete=allow_mass_delete)
    async with (
        _lease(engine, settings.sync_lease_seconds),
        api_client(settings, transport=transport) as client,
    ):
        results = []
        for resource in resources:
            results.append(
                await reconcile(
                    engine,
                    client,
                    resource,
                    options,
                    progress=progress(resource) if progress else None,
                )
            )
        return results


async def run_refresh(
    settings: Settings,
    engine: Engine,
    days: Sequence[date],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> PassResult:
    """Refresh the appointments of ``days`` under the lease (no sweep)."""
    filters = [{"date": day.isoformat()} for day in days]
    async with (
        _lease(engine, settings.sync_lease_seconds),
        api_client(settings, transport=transport) as client,
    ):
        return await refresh(engine, client, Resource.APPOINTMENT, filters, pass_options(settings))


@contextlib.asynccontextmanager
async def _lease(engine: Engine, ttl_seconds: float) -> AsyncIterator[None]:
    holder = holder_name()
    take = functools.partial(runs.acquire_lease, name=LEASE, holder=holder, ttl_seconds=ttl_seconds)
    if not await asyncio.to_thread(write_transaction, engine, take):
        current = await asyncio.to_thread(
            write_transaction, engine, functools.partial(runs.lease_holder, name=LEASE)
        )
        raise LeaseHeld(f"another reconcile is running ({current or 'unknown holder'})")

    async def renew() -> None:
        while True:
            await asyncio.sleep(ttl_seconds / 3)
            try:
                if not await asyncio.to_thread(write_transaction, engine, take):
                    log.error("the reconcile lease was lost to another process")
            except DatabaseUnavailable as error:
                log.warning("could not renew the reconcile lease: %s", error)

    renewing = asyncio.create_task(renew(), name="lease-renewal")
    try:
        yield
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
        release = functools.partial(runs.release_lease, name=LEASE, holder=holder)
        with contextlib.suppress(DatabaseUnavailable):
            await asyncio.to_thread(write_transaction, engine, release)
