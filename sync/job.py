"""The reconcile job: what ``healthdock-mirror sync`` and the scheduler run.

It takes the reconcile lease (one reconcile at a time across every process sharing the
database), keeps renewing it while passes run, runs one pass per resource, and releases it.
A holder that could not renew in time (paused, cut off from the database) may have been
taken over once its lease expired: as soon as it finds that out, it stops its passes and
leaves them to the new holder, which resumes them from their checkpoints. Until it finds out
it can write nothing either: every write of its passes checks the lease's fencing token
(``mirror.leases.Fence``), which the new holder's taking increased.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import date

import httpx
from sqlalchemy import Engine

from config import ApiAuth, ConfigurationError, Settings
from mirror import (
    DatabaseUnavailable,
    Resource,
    Sealer,
    leases,
    read_transaction,
    write_transaction,
)
from sync.client import HealthDockClient
from sync.credentials import Credentials
from sync.grant import OAuthGrant
from sync.oauth import ClientRegistration, TokenEndpoint
from sync.passes import PassOptions, PassResult, Progress
from sync.reconcile import reconcile, refresh

log = logging.getLogger(__name__)

LEASE = "reconcile"


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
    settings: Settings, engine: Engine, *, transport: httpx.AsyncBaseTransport | None = None
) -> HealthDockClient:
    """The API client as the settings say: with the API key, or with the stored OAuth grant
    (HEALTHDOCK_API_AUTH=oauth), whose token endpoint shares the API's transport."""
    credentials: str | Credentials
    if settings.api_auth is ApiAuth.OAUTH:
        assert settings.secret_key is not None  # the settings refuse oauth without one
        endpoint = TokenEndpoint(
            ClientRegistration.from_settings(settings),
            timeout_seconds=settings.api_timeout_seconds,
            transport=transport,
        )
        credentials = OAuthGrant(engine, Sealer(settings.secret_key.get_secret_value()), endpoint)
    elif settings.api_key is None:
        raise ConfigurationError("HEALTHDOCK_API_KEY: needed to read HealthDock's API")
    else:
        credentials = settings.api_key.get_secret_value()
    return HealthDockClient(
        settings.api_url,
        credentials,
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
    """One pass per resource under the lease; raises leases.LeaseHeld if another process has it."""
    options = pass_options(settings, allow_mass_delete=allow_mass_delete)
    async with (
        _lease(engine, settings.sync_lease_seconds) as fence,
        api_client(settings, engine, transport=transport) as client,
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
                    fence=fence,
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
        _lease(engine, settings.sync_lease_seconds) as fence,
        api_client(settings, engine, transport=transport) as client,
    ):
        return await refresh(
            engine, client, Resource.APPOINTMENT, filters, pass_options(settings), fence=fence
        )


@contextlib.asynccontextmanager
async def _lease(engine: Engine, ttl_seconds: float) -> AsyncIterator[leases.Fence]:
    # Unique to this taking of the lease, not just to the process: the scheduler's jobs in one
    # process (full, retry, upcoming) must exclude each other too, and one job's release must
    # never drop a lease another job of the same process still holds.
    holder = f"{holder_name()}:{uuid.uuid4().hex[:8]}"
    take = functools.partial(leases.take_lease, name=LEASE, holder=holder, ttl_seconds=ttl_seconds)
    fence = await asyncio.to_thread(write_transaction, engine, take)
    if fence is None:
        current = await _current_holder(engine)
        raise leases.LeaseHeld(f"another reconcile is running ({current or 'unknown holder'})")
    renew_lease = functools.partial(leases.renew_lease, fence=fence, ttl_seconds=ttl_seconds)

    owner = asyncio.current_task()
    assert owner is not None
    held_until = time.monotonic() + ttl_seconds
    lost: list[str] = []

    async def renew() -> None:
        nonlocal held_until
        while True:
            await asyncio.sleep(ttl_seconds / 3)
            asked_at = time.monotonic()
            try:
                held = await asyncio.to_thread(write_transaction, engine, renew_lease)
            except DatabaseUnavailable as error:
                log.warning("could not renew the reconcile lease: %s", error)
                # Still ours until it lapses; after that another process may have it.
                held = time.monotonic() < held_until
            else:
                if held:
                    held_until = asked_at + ttl_seconds
            if not held:
                current = await _current_holder(engine)
                lost.append(
                    f"the reconcile lease lapsed before it was renewed (now held by "
                    f"{current or 'nobody'})"
                )
                owner.cancel()
                return

    renewing = asyncio.create_task(renew(), name="lease-renewal")
    try:
        yield fence
    except leases.LeaseLost as fenced:
        # A write found the lease taken over (its fence check failed) before renewal did.
        log.warning("%s: this reconcile stopped", fenced)
        raise
    except asyncio.CancelledError:
        # Our own cancellation (the lease is gone) ends the passes as leases.LeaseLost; a shutdown's
        # stays a cancellation.
        if lost and owner.uncancel() == 0:
            log.warning("%s: this reconcile stopped", lost[0])
            raise leases.LeaseLost(lost[0]) from None
        raise
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
        release = functools.partial(leases.release_lease, name=LEASE, holder=holder)
        with contextlib.suppress(DatabaseUnavailable):
            await asyncio.to_thread(write_transaction, engine, release)


async def _current_holder(engine: Engine) -> str | None:
    holder = functools.partial(leases.lease_holder, name=LEASE)
    try:
        return await asyncio.to_thread(read_transaction, engine, holder)
    except DatabaseUnavailable:
        return None
