"""Engines for the mirror database, and the one error that means "try again later".

SQLite is the embedded default: WAL so analysts can read while we write, a busy timeout so a
short lock waits instead of failing, and ``synchronous=FULL`` so a committed event survives a
power cut. Writers start with ``BEGIN IMMEDIATE`` so two writers queue on the lock instead of
deadlocking when one upgrades from reading to writing.

A connection that failed in a way that outlives the fault (SQLite: opened while the file was
read-only, an I/O error; PostgreSQL: a read-only standby) is closed rather than pooled, so the
service recovers by itself once the database does.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import QueuePool

T = TypeVar("T")

# SQLite result codes (primary, the low byte) after which a connection stays broken though the
# cause has passed: a file that was read-only when the connection opened stays read-only to it
# for ever, and after an I/O error or a file it could not open, only a new connection sees the
# file as it is now.
_SQLITE_REOPEN = frozenset({8, 10, 14})  # SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN


class DatabaseUnavailable(Exception):
    """The database cannot be reached, is locked or refuses writes; retry later."""


def create_mirror_engine(database_url: str, *, timeout_seconds: float = 5.0) -> Engine:
    """An engine for ``database_url`` tuned for this service's durability promises."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(database_url, timeout_seconds)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    # A write waiting on another's lock longer than this fails (503) instead of hanging.
    options = f"{url.query.get('options', '')} -c lock_timeout={int(timeout_seconds * 1000)}"
    url = url.update_query_dict({"options": options.strip()})
    return create_engine(
        url,
        poolclass=QueuePool,
        pool_size=5,
        max_overflow=5,
        pool_timeout=timeout_seconds,
        # A restarted server leaves dead connections in the pool: test each before use.
        pool_pre_ping=True,
        connect_args={"connect_timeout": max(1, round(timeout_seconds))},
    )


def _sqlite_engine(database_url: str, timeout_seconds: float) -> Engine:
    engine = create_engine(
        database_url,
        connect_args={"timeout": timeout_seconds, "check_same_thread": False},
        poolclass=QueuePool,
        pool_size=4,
        max_overflow=4,
        pool_timeout=timeout_seconds,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(timeout_seconds * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextlib.contextmanager
def unavailable_as_error() -> Iterator[None]:
    """Turn "cannot reach or lock the database" into :class:`DatabaseUnavailable`."""
    try:
        yield
    except (exc.OperationalError, exc.InterfaceError) as error:
        raise DatabaseUnavailable(_describe(error)) from error
    except (
        sqlite3.OperationalError,
        psycopg.OperationalError,
        psycopg.InterfaceError,
        psycopg.errors.ReadOnlySqlTransaction,
    ) as error:
        # Raised by statements run on the driver's cursor (mirror.driver), which SQLAlchemy
        # does not wrap. Only the first line: it names the failure, not the data.
        raise DatabaseUnavailable(str(error).splitlines()[0][:200]) from error
    except exc.DBAPIError as error:
        if error.connection_invalidated or isinstance(
            error.orig, psycopg.errors.ReadOnlySqlTransaction
        ):
            raise DatabaseUnavailable(_describe(error)) from error
        raise
    except exc.TimeoutError as error:
        raise DatabaseUnavailable("no database connection free in time") from error


def _describe(error: exc.DBAPIError) -> str:
    # The driver's first line says what failed (refused, locked, read-only) without any data.
    return str(error.orig).splitlines()[0][:200] if error.orig is not None else type(error).__name__


def _stays_broken(error: BaseException) -> bool:
    """Whether the connection that raised ``error`` must be replaced, not reused.

    PostgreSQL: a read-only server (a standby, during or after a failover) keeps the
    connection read-only; a new one reaches whatever the address names now.
    """
    cause = error.orig if isinstance(error, exc.DBAPIError) else error
    if isinstance(cause, sqlite3.Error):
        return (getattr(cause, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_REOPEN
    return isinstance(cause, psycopg.errors.ReadOnlySqlTransaction)


@contextlib.contextmanager
def _replaced_when_broken(connection: Connection) -> Iterator[None]:
    try:
        yield
    except Exception as error:
        if _stays_broken(error):
            connection.invalidate()  # closed now; the pool opens a new one next time
        raise


def write_transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run ``work`` in one short write transaction; unavailability raises DatabaseUnavailable."""
    with (
        unavailable_as_error(),
        engine.connect() as connection,
        _replaced_when_broken(connection),
        connection.begin(),
    ):
        return work(connection)


def read_transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run ``work`` in a read transaction that does not take SQLite's write lock."""
    with (
        unavailable_as_error(),
        engine.connect().execution_options(sqlite_begin="DEFERRED") as connection,
        _replaced_when_broken(connection),
        connection.begin(),
    ):
        return work(connection)
