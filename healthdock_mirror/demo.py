"""``healthdock-mirror demo``: everything on the embedded SQLite default, against a local fake
HealthDock that mutates its data and sends signed webhooks, some of them lost, duplicated or
out of order, so the terminal shows both what arrives and what the reconciler heals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from config import Settings
from mirror import (
    DatabaseUnavailable,
    EventSource,
    Resource,
    event_count,
    read_transaction,
    record_counts,
    runs,
)

log = logging.getLogger("healthdock_mirror.demo")

DEMO_PATIENTS = 2_000
STATUS_SECONDS = 5.0


def demo_settings(settings: Settings) -> Settings:
    """The user's settings, with what the demo needs filled in (a secret, a fast schedule)."""
    # model_copy does not validate: values go in as the settings object holds them.
    secret = settings.webhook_secret or (SecretStr(secrets.token_hex(16)),)
    return settings.model_copy(
        update={
            "webhook_secret": secret,
            "api_key": settings.api_key or SecretStr("demo-api-key"),
            "sync_interval_minutes": 0.5,
            "sync_retry_minutes": 0.25,
            "sync_upcoming_minutes": 0.25,
        }
    )


@contextlib.contextmanager
def fake_healthdock(settings: Settings) -> Iterator[str]:
    """A fake HealthDock on a loopback port, webhooks aimed at our receiver; yields its API URL."""
    from fake_healthdock import FakeHealthDock, WebhookSwitches, serve_in_thread

    assert settings.api_key is not None
    fake = FakeHealthDock(
        seed=1,
        patients=DEMO_PATIENTS,
        api_key=settings.api_key.get_secret_value(),
        webhook_url=f"http://{settings.host}:{settings.port}/webhooks/healthdock",
        webhook_secret=settings.webhook_secret[0].get_secret_value(),
        rate_limit=600,
        window_seconds=60,
        # Lose a fifth of the webhooks, duplicate and reorder some: the reconciler's work.
        webhook_switches=WebhookSwitches(drop_rate=0.2, duplicate_rate=0.1, reorder=4),
    )
    with serve_in_thread(fake, mutations_per_second=2.0) as base_url:
        yield f"{base_url}/v1"


@contextlib.asynccontextmanager
async def status_printer(engine: Engine) -> AsyncIterator[None]:
    """Print what has arrived and what the reconciler healed, every few seconds."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(STATUS_SECONDS)
            try:
                line = await asyncio.to_thread(read_transaction, engine, _status_line)
            except DatabaseUnavailable as error:
                line = f"database unavailable: {error}"
            print(line, flush=True)

    task = asyncio.create_task(loop(), name="demo-status")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _status_line(connection: Connection) -> str:
    patients = record_counts(connection, Resource.PATIENT)
    appointments = record_counts(connection, Resource.APPOINTMENT)
    webhooks = event_count(connection, EventSource.WEBHOOK)
    # Every run is counted; what they healed leaves out a backfill's initial copy (not loss).
    healed = runs.healed(connection)
    return (
        f"mirror: {patients.live} patients, {appointments.live} appointments | "
        f"webhooks stored: {webhooks} | reconcile runs: {runs.run_count(connection)}, healed "
        f"{healed.created} missed creates, {healed.updated} updates, {healed.tombstoned} deletes"
    )


def demo_services(settings: Settings) -> list[Any]:
    """The demo's lifespan service for the receiver: the fake first (its URL is known only
    once it listens), then the scheduler reading from it, then the status line."""
    from sync import running_scheduler

    @contextlib.asynccontextmanager
    async def demo(engine: Engine) -> AsyncIterator[None]:
        with fake_healthdock(settings) as api_url:
            live = settings.model_copy(update={"api_url": api_url})
            async with running_scheduler(live, engine), status_printer(engine):
                yield

    return [demo]
