"""The scheduler's promise: a reconcile that did not succeed is tried again soon, not a full
interval later (SPEC: "retried soon rather than a full interval later")."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from mirror.schema import sync_runs
from sync.schedule import build_scheduler
from tests.conftest import make_settings


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_incomplete_reconcile_is_retried_after_the_retry_delay(
    database_url: str, engine: Engine
) -> None:
    # HealthDock cannot be reached: every pass ends incomplete.
    settings = make_settings(
        database_url,
        api_url=f"http://127.0.0.1:{_closed_port()}/v1",
        api_key="key",
        api_attempts=1,
        sync_interval_minutes=60,
        sync_retry_minutes=5,
    )
    scheduler = build_scheduler(settings, engine)
    assert scheduler.get_job("reconcile-retry") is None
    began = datetime.now(UTC)
    asyncio.run(scheduler.get_job("reconcile").func())

    retry = scheduler.get_job("reconcile-retry")
    assert retry is not None
    assert (
        began + timedelta(minutes=5)
        <= retry.trigger.run_date
        <= datetime.now(UTC) + timedelta(minutes=5)
    )
    with engine.connect() as connection:
        outcomes = connection.execute(select(sync_runs.c.outcome)).scalars().all()
    assert set(outcomes) == {"incomplete"}


def test_a_successful_reconcile_schedules_no_retry(database_url: str, engine: Engine) -> None:
    from fake_healthdock import FakeHealthDock, serve_in_thread

    fake = FakeHealthDock(seed=3, patients=20, appointments_per_patient=1.0, api_key="key")
    with serve_in_thread(fake) as base_url:
        settings = make_settings(database_url, api_url=f"{base_url}/v1", api_key="key")
        scheduler = build_scheduler(settings, engine)
        asyncio.run(scheduler.get_job("reconcile").func())
    assert scheduler.get_job("reconcile-retry") is None
    with engine.connect() as connection:
        assert set(connection.execute(select(sync_runs.c.outcome)).scalars()) == {"success"}
