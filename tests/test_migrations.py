"""Every revision upgrades and downgrades cleanly on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy import inspect

from mirror.database import create_mirror_engine
from mirror.migrate import current_revision, downgrade, head_revision, is_current, upgrade
from mirror.schema import FOLDED_NAME_INDEXES, appointments, metadata, mirror_settings

_BEFORE_LOCAL_DATES = "b96c2e4f7a55"  # the revision before appointments.local_date


def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    engine = create_mirror_engine(database_url)
    assert current_revision(engine) is None
    assert not is_current(engine)
    upgrade(engine)
    assert is_current(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"patients", "appointments", "webhook_events", "sync_runs"} <= tables
    assert set(metadata.tables) <= tables
    downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_analytics_indexes_exist(database_url: str) -> None:
    engine = create_mirror_engine(database_url)
    upgrade(engine)
    indexed = {tuple(ix["column_names"]) for ix in inspect(engine).get_indexes("appointments")}
    assert {
        ("date_time",),
        ("doctor_id", "date_time"),
        ("status", "date_time"),
        ("patient_id",),
        ("local_date", "id"),
    } <= indexed
    engine.dispose()


def test_sqlite_is_durable_wal(tmp_path: object) -> None:
    engine = create_mirror_engine(f"sqlite:///{tmp_path}/m.db", timeout_seconds=3)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 3000
    engine.dispose()


def test_migrations_match_the_schema_module(database_url: str) -> None:
    """What the code writes (mirror.schema) is exactly what the migrations create."""
    from alembic import command

    from mirror.migrate import alembic_config

    engine = create_mirror_engine(database_url)
    upgrade(engine)
    command.check(alembic_config(engine))  # raises if autogenerate would find a difference
    engine.dispose()


def test_local_dates_are_filled_for_existing_rows(database_url: str) -> None:
    """The revision that adds appointments.local_date computes it for the rows already there,
    in the engine's zone (HEALTHDOCK_TIMEZONE), which it records; its downgrade keeps them."""
    new_york = ZoneInfo("America/New_York")
    engine = create_mirror_engine(database_url, local_timezone=new_york)
    upgrade(engine, _BEFORE_LOCAL_DATES)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    # More rows than one of the migration's batches (5000), 47 minutes apart: every hour of the
    # day, across the change to daylight saving time on 2026-03-08.
    rows = [
        {"id": f"APT{i:06d}", "date_time": start + timedelta(minutes=47 * i), "mirrored_at": start}
        for i in range(10_500)
    ]
    rows.append({"id": "UNDATED", "date_time": None, "mirrored_at": start})
    old_appointments = sa.table(
        "appointments", sa.column("id", sa.String()),
        sa.column("date_time", sa.DateTime(timezone=True)),
        sa.column("mirrored_at", sa.DateTime(timezone=True)),
    )  # fmt: skip
    with engine.begin() as connection:
        connection.execute(sa.insert(old_appointments), rows)

    upgrade(engine)

    with engine.connect() as connection:
        selected = connection.execute(sa.select(appointments.c.id, appointments.c.local_date))
        found = {row[0]: row[1] for row in selected}
        zone = connection.execute(sa.select(mirror_settings.c.name, mirror_settings.c.value)).all()
    expected = {
        row["id"]: None
        if row["date_time"] is None
        else row["date_time"].astimezone(new_york).date()
        for row in rows
    }
    assert found == expected
    assert len(set(found.values())) > 20
    assert zone == [("local_date_timezone", "America/New_York")]

    downgrade(engine, _BEFORE_LOCAL_DATES)
    inspector = inspect(engine)
    assert "local_date" not in {c["name"] for c in inspector.get_columns("appointments")}
    assert "mirror_settings" not in inspector.get_table_names()
    assert not {"live_patients", "live_appointments"} & set(inspector.get_view_names())
    with engine.connect() as connection:
        count = connection.execute(sa.select(sa.func.count()).select_from(old_appointments))
        assert count.scalar_one() == len(rows)
    engine.dispose()


def test_alembic_on_its_own_reads_the_zone_from_the_settings(
    database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`alembic upgrade head`, without the command line: the service's settings decide."""
    from alembic import command

    from mirror.local_dates import local_date_zone
    from mirror.migrate import alembic_config

    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    monkeypatch.setenv("HEALTHDOCK_DATABASE_URL", database_url)
    monkeypatch.setenv("HEALTHDOCK_TIMEZONE", "Europe/Lisbon")
    command.upgrade(alembic_config(), "head")
    engine = create_mirror_engine(database_url)
    with engine.connect() as connection:
        assert local_date_zone(connection) == "Europe/Lisbon"
    engine.dispose()


def test_the_head_constant_is_alembics_head() -> None:
    # The schema check trusts HEAD_REVISION; a migration added without updating it fails here.
    from alembic.script import ScriptDirectory

    from mirror.migrate import HEAD_REVISION, alembic_config

    assert ScriptDirectory.from_config(alembic_config()).get_heads() == [HEAD_REVISION]


def test_a_schema_behind_the_head_is_not_current(database_url: str) -> None:
    engine = create_mirror_engine(database_url)
    upgrade(engine, _BEFORE_LOCAL_DATES)
    assert current_revision(engine) == _BEFORE_LOCAL_DATES
    assert not is_current(engine)
    upgrade(engine)
    assert is_current(engine)
    engine.dispose()


_BEFORE_LISTED_RECORDS = "e7b3c1d9a4f2"


def test_the_marks_of_the_last_pass_move_to_listed_records_and_back(database_url: str) -> None:
    """The revision that moves seen_in_run into listed_records keeps every mark (so the next
    sweep finds what it would have found), and its downgrade puts them back."""
    engine = create_mirror_engine(database_url)
    upgrade(engine, _BEFORE_LISTED_RECORDS)
    moment = datetime(2026, 3, 1, tzinfo=UTC)
    for name, prefix in (("patients", "PAT"), ("appointments", "APT")):
        old = sa.table(name, sa.column("id", sa.String()),
                       sa.column("seen_in_run", sa.BigInteger()),
                       sa.column("mirrored_at", sa.DateTime(timezone=True)))  # fmt: skip
        with engine.begin() as connection:
            connection.execute(sa.insert(old), [
                {"id": f"{prefix}{i}", "seen_in_run": None if i == 3 else 10 + i % 2,
                 "mirrored_at": moment}
                for i in range(5)
            ])  # fmt: skip

    upgrade(engine)

    listed = sa.table("listed_records", sa.column("resource"), sa.column("record_id"),
                      sa.column("run_id"))  # fmt: skip
    with engine.connect() as connection:
        marks = set(connection.execute(sa.select(listed.c.resource, listed.c.record_id,
                                                 listed.c.run_id)))  # fmt: skip
    expected = {(resource, f"{prefix}{i}", 10 + i % 2)
                for resource, prefix in (("patient", "PAT"), ("appointment", "APT"))
                for i in range(5) if i != 3}  # fmt: skip
    assert marks == expected
    inspector = inspect(engine)
    assert "seen_in_run" not in {c["name"] for c in inspector.get_columns("patients")}
    with engine.connect() as connection:  # the expression indexes, which reflection omits
        if connection.dialect.name == "postgresql":
            query = "SELECT indexname FROM pg_indexes WHERE tablename = 'patients'"
        else:
            query = "SELECT name FROM sqlite_master WHERE type = 'index'"
        assert set(connection.execute(sa.text(query)).scalars()) >= FOLDED_NAME_INDEXES

    downgrade(engine, _BEFORE_LISTED_RECORDS)
    with engine.connect() as connection:
        back = dict(connection.execute(sa.text("SELECT id, seen_in_run FROM patients")).all())
    assert back == {"PAT0": 10, "PAT1": 11, "PAT2": 10, "PAT3": None, "PAT4": 10}
    assert "listed_records" not in inspect(engine).get_table_names()
    engine.dispose()
