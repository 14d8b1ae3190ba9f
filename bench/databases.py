"""Throwaway PostgreSQL databases for the benchmark runners (bench/ingest, bench/sync)."""

from __future__ import annotations

import psycopg
from psycopg import sql
from sqlalchemy import make_url


def pg_service_url(admin_url: str, database: str) -> str:
    return make_url(admin_url).set(database=database).render_as_string(hide_password=False)


def recreate_pg_database(admin_url: str, database: str) -> None:
    # FORCE: a killed server's or command's connections may linger for a moment after it is gone.
    with psycopg.connect(admin_url, autocommit=True) as connection:
        name = sql.Identifier(database)
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        connection.execute(sql.SQL("CREATE DATABASE {}").format(name))


def drop_pg_database(admin_url: str, database: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )


def pg_settings(admin_url: str) -> dict[str, str]:
    """The settings that decide what a PostgreSQL commit costs, recorded with the results."""
    names = ("server_version", "fsync", "synchronous_commit", "wal_sync_method", "commit_delay")
    settings = {}
    with psycopg.connect(admin_url, autocommit=True) as connection:
        for name in names:
            row = connection.execute("SELECT current_setting(%s)", (name,)).fetchone()
            settings[name] = str(row[0]) if row else "?"
    return settings
