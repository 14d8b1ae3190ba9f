"""Changing HEALTHDOCK_TIMEZONE: ``status`` and the writing commands say so, and
``healthdock-mirror local-dates`` brings every appointment to the new zone. On SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select

from healthdock_mirror.context import warn_of_other_local_date_zone
from mirror.ingest import ingest
from mirror.schema import appointments
from tests.conftest import make_settings
from tests.factories import appointment, event
from tests.support.stored_events import incoming

EVENINGS = {f"APT{day}": f"2026-03-0{day}T20:00:00Z" for day in range(1, 5)}


def run(database_url: str, zone: str, *args: str) -> Result:
    from healthdock_mirror.cli import main

    env = {"HEALTHDOCK_DATABASE_URL": database_url, "HEALTHDOCK_TIMEZONE": zone}
    return CliRunner().invoke(main, list(args), env=env)


def local_dates(engine: Engine) -> dict[str, date | None]:
    with engine.connect() as connection:
        query = select(appointments.c.id, appointments.c.local_date)
        return {row.id: row.local_date for row in connection.execute(query)}


@pytest.fixture
def booked(engine: Engine) -> Engine:
    """Four appointments at 20:00 UTC (the next day in Kolkata) and one without a date_time,
    written in the default zone."""
    documents = [appointment(i, date_time=moment) for i, moment in EVENINGS.items()]
    documents.append(appointment("UNDATED", date_time=None))
    ingest(engine, [incoming(event("appointment.created", d)) for d in documents])
    return engine


def test_a_zone_change_is_reported_until_local_dates_runs(
    database_url: str, booked: Engine
) -> None:
    kolkata = {f"APT{day}": date(2026, 3, day + 1) for day in range(1, 5)} | {"UNDATED": None}
    assert local_dates(booked) == kolkata
    advice = "run healthdock-mirror local-dates"
    assert advice not in run(database_url, "Asia/Kolkata", "status").stdout

    status = run(database_url, "America/New_York", "status")
    assert status.exit_code == 0, status.output
    assert "appointments.local_date is in Asia/Kolkata but HEALTHDOCK_TIMEZONE is" in status.stdout
    document = json.loads(run(database_url, "America/New_York", "status", "--json").stdout)
    assert document["local_dates"] == {
        "zone": "Asia/Kolkata", "configured_zone": "America/New_York", "current": False,
    }  # fmt: skip

    result = run(database_url, "America/New_York", "local-dates", "--batch-size", "2")

    assert result.exit_code == 0, result.output
    assert (
        "local_date in America/New_York (was Asia/Kolkata): 4 of 5 appointments changed"
        in result.stdout
    )
    new_york = {f"APT{day}": date(2026, 3, day) for day in range(1, 5)} | {"UNDATED": None}
    assert local_dates(booked) == new_york
    assert advice not in run(database_url, "America/New_York", "status").stdout
    document = json.loads(run(database_url, "America/New_York", "status", "--json").stdout)
    assert document["local_dates"]["current"] is True
    # The old zone is now the one that differs.
    assert advice in run(database_url, "Asia/Kolkata", "status").stdout

    again = run(database_url, "America/New_York", "local-dates")
    assert again.exit_code == 0, again.output
    assert "local_date in America/New_York: 0 of 5 appointments changed" in again.stdout
    assert local_dates(booked) == new_york

    back = run(database_url, "Asia/Kolkata", "local-dates")
    assert "(was America/New_York): 4 of 5 appointments changed" in back.stdout
    assert local_dates(booked) == kolkata


def test_writing_commands_warn_once_at_start(
    database_url: str, booked: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # serve, worker and sync call this before they start writing.
    with caplog.at_level(logging.WARNING):
        warn_of_other_local_date_zone(make_settings(database_url))
    assert caplog.records == []
    with caplog.at_level(logging.WARNING):
        warn_of_other_local_date_zone(make_settings(database_url, timezone="Europe/London"))
    [record] = caplog.records
    assert record.getMessage() == (
        "appointments.local_date is in Asia/Kolkata but HEALTHDOCK_TIMEZONE is Europe/London: "
        "run healthdock-mirror local-dates"
    )


def test_an_unknown_zone_fails_at_start_with_its_name(tmp_path: Path) -> None:
    result = run(f"sqlite:///{tmp_path / 'mirror.db'}", "Asia/Bangalore", "migrate")
    assert result.exit_code != 0
    assert "HEALTHDOCK_TIMEZONE: unknown time zone 'Asia/Bangalore'" in result.output
    assert not (tmp_path / "mirror.db").exists()


def test_local_dates_refuses_a_missing_sqlite_file(tmp_path: Path) -> None:
    result = run(f"sqlite:///{tmp_path / 'typo.db'}", "UTC", "local-dates")
    assert result.exit_code != 0
    assert "there is no SQLite mirror" in result.output
