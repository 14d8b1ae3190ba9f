"""Every revision upgrades and downgrades cleanly on both databases."""

from __future__ import annotations

from sqlalchemy import inspect

from mirror.database import create_mirror_engine
from mirror.migrate import current_revision, downgrade, head_revision, is_current, upgrade
from mirror.schema import metadata


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
