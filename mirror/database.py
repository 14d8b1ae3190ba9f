"""Engines for the mirror database, and the one error that means "try again later".

SQLite is the embedded default: WAL so analysts can read while we write, a busy timeout so a
short lock waits instead of failing, and ``synchronous=FULL`` so a committed event survives a
power cut. Writers start with ``BEGIN IMMEDIATE`` so two writers queue on the lock instead of
deadlocking when one upgrades from reading to writing.

A new SQLite file is created readable and writable by its owner only, before SQLite would create
it by the umask (usually readable by every local user): it holds patient data. SQLite gives its
``-wal`` and ``-shm`` files the database file's mode, so they are private too. An existing file
keeps its mode: the operator may have granted analysts access.

A connection that failed in a way that outlives the fault (SQLite: opened while the file was
read-only, an I/O error; PostgreSQL: a read-only standby) is closed rather than pooled, so the
service recovers by itself once the database does.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import unquote
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import asbool

from config import DEFAULT_TIMEZONE, MirrorError

T = TypeVar("T")

# SQLite result codes (primary, the low byte) after which a connection stays broken though the
# cause has passed: a file that was read-only when the connection opened stays read-only to it
# for ever, and after an I/O error or a file it could not open, only a new connection sees the
# file as it is now.
_SQLITE_REOPEN = frozenset({8, 10, 14})  # SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN


class DatabaseUnavailable(MirrorError):
    """The database cannot be reached, is locked or refuses writes; retry later."""


@dataclass(frozen=True, slots=True)
class _SqliteTarget:
    path: Path
    created_when_absent: bool  # false for the URI modes ro and rw: SQLite then refuses instead


def sqlite_file(database_url: str) -> Path | None:
    """The file a SQLite URL opens, as the driver resolves it (a relative name against the
    working directory); None for a URL that names no lasting file: not SQLite, ``:memory:``,
    ``mode=memory``, or an empty name (SQLite's temporary database)."""
    target = _sqlite_target(database_url)
    return target.path if target is not None else None


def create_private_sqlite_file(database_url: str) -> None:
    """Create the SQLite file ``database_url`` names, mode 0600, if it is absent and SQLite
    would create it on opening. Anything in the way (no such directory, no permission) is left
    for SQLite to report when it opens the file."""
    target = _sqlite_target(database_url)
    if target is None or not target.created_when_absent:
        return
    with contextlib.suppress(OSError):
        # O_EXCL: an existing file, or a link planted in its place, is never touched.
        os.close(os.open(target.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_target(database_url: str) -> _SqliteTarget | None:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return None
    # As SQLAlchemy's pysqlite dialect (create_connect_args) reads the URL: with uri=true the
    # name goes to SQLite as a URI filename, with the URL's other query options appended.
    if not asbool(url.query.get("uri", False)):
        return _plain_target(url.database or ":memory:")
    name = url.database or ""
    if not name.startswith("file:"):
        return _plain_target(name)  # an ordinary file name, even with URIs enabled
    options = {
        key: value
        for key, value in url.query.items()
        if key not in _PYSQLITE_OPTIONS and isinstance(value, str)
    }
    if options:
        name += "?" + "&".join(f"{key}={value}" for key, value in options.items())
    return _uri_target(name)


def _plain_target(name: str) -> _SqliteTarget | None:
    return None if name in ("", ":memory:") else _SqliteTarget(Path(os.path.abspath(name)), True)


# The query options that the pysqlite dialect gives the driver rather than SQLite's URI.
_PYSQLITE_OPTIONS = frozenset(
    {"uri", "timeout", "isolation_level", "detect_types", "check_same_thread", "cached_statements"}
)


def _uri_target(uri: str) -> _SqliteTarget | None:
    """The file of a SQLite URI filename, by the rules of https://sqlite.org/uri.html."""
    rest = uri.removeprefix("file:")
    if rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        if authority not in ("", "localhost"):
            return None  # SQLite refuses to open it
        rest = slash + path
    path, _, query = rest.partition("#")[0].partition("?")
    parameters = {}
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        parameters[unquote(key)] = unquote(value)
    path = unquote(path)
    mode = parameters.get("mode", "rwc")
    if path in ("", ":memory:") or mode == "memory" or parameters.get("vfs") == "memdb":
        return None
    return _SqliteTarget(Path(os.path.abspath(path)), created_when_absent=mode == "rwc")


# The execution option that tells the mirror's writers the zone of appointments.local_date.
_LOCAL_TIMEZONE = "local_timezone"


def create_mirror_engine(
    database_url: str,
    *,
    timeout_seconds: float = 5.0,
    local_timezone: ZoneInfo | None = None,
    key_lookups_only: bool = False,
) -> Engine:
    """An engine for ``database_url`` tuned for this service's durability promises.

    Its connections carry ``local_timezone`` (default Asia/Kolkata) to the writers of the
    mirror (see :func:`local_timezone`), which compute local dates in it without a query.
    ``key_lookups_only`` is for an engine whose every statement finds its rows by a key (the
    receiver's committer): on PostgreSQL its statements keep their plans (see below).
    """
    execution = {_LOCAL_TIMEZONE: local_timezone or ZoneInfo(DEFAULT_TIMEZONE)}
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(database_url, timeout_seconds, execution)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    # A write waiting on another's lock longer than this fails (503) instead of hanging.
    options = f"{url.query.get('options', '')} -c lock_timeout={int(timeout_seconds * 1000)}"
    # psycopg prepares a statement run five times, and PostgreSQL may then keep one generic
    # plan for the connection's life: planned while the mirror was small (a sequential scan
    # of patients was cheapest then), and kept while the table grew, until an ANALYZE. A
    # receiver's rate fell from 2,381 to 799 events/s over six 8-second runs that way (27k
    # rows). Plans made for each execution's values cost a fraction of a millisecond.
    if not key_lookups_only:
        options += " -c plan_cache_mode=force_custom_plan"
    else:
        # ... but the committer runs six or so statements a batch, and planning each again
        # was a sixth of PostgreSQL's CPU per event: kept plans took it from 179 to 150 us in
        # batches of 16, 119 to 99 in batches of 32 (bench/ingest/committer.py's measure, 4
        # alternating rounds). Its statements all find rows by a unique index, so sequential
        # scans are ruled out instead: a plan made on an empty table is then the index scan
        # it still needs at any size (tests/mirror/test_database.py), and can be kept.
        options += " -c enable_seqscan=off"
    url = url.update_query_dict({"options": options.strip()})
    engine = create_engine(
        url,
        poolclass=QueuePool,
        pool_size=5,
        max_overflow=5,
        pool_timeout=timeout_seconds,
        connect_args={"connect_timeout": max(1, round(timeout_seconds))},
        execution_options=execution,
    )
    _ping_when_idle(engine)
    return engine


# A restarted server leaves dead connections in the pool, so a connection is tested before
# use; but not one back in the pool for less than this: under load each batch of the
# committer would otherwise pay a round trip for it. A connection that died that recently
# fails its statement, is replaced (_replaced_when_broken), and the request is answered 503.
_PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    import psycopg  # here: a PostgreSQL engine loads it anyway (see _loaded_psycopg)

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get("returned_at")
        if returned is not None and time.monotonic() - returned < _PING_AFTER_IDLE_SECONDS:
            return
        try:
            dbapi_connection.execute("SELECT 1")
            dbapi_connection.rollback()
        except psycopg.Error:
            # The pool discards it and checks out (or opens) another.
            raise exc.DisconnectionError from None


# Per connection, in KiB (PRAGMA cache_size takes a negative number as KiB).
SQLITE_CACHE_KIB = 16384


def _sqlite_engine(database_url: str, timeout_seconds: float, execution: dict[str, Any]) -> Engine:
    engine = create_engine(
        database_url,
        execution_options=execution,
        connect_args={"timeout": timeout_seconds, "check_same_thread": False},
        poolclass=QueuePool,
        pool_size=4,
        max_overflow=4,
        pool_timeout=timeout_seconds,
    )

    @event.listens_for(engine, "do_connect")
    def _before_connect(*_: Any) -> None:
        # Every path to a new file (the command line, the receiver, `alembic upgrade head`)
        # opens it through an engine made here.
        create_private_sqlite_file(database_url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        # SQLite's default page cache (2 MiB) holds too little of the mirror's indexes: a
        # 200k-patient reconcile read 2.2 million pages back from the OS (6 s of system
        # time). Bounded per connection, so memory stays flat however large the file grows.
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cursor.execute(f"PRAGMA busy_timeout={int(timeout_seconds * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {mode}")

    _SQLITE_WRITERS[engine] = threading.RLock()
    return engine


def local_timezone(bind: Connection | Engine) -> ZoneInfo:
    """The zone in which the mirror's writers on ``bind`` compute appointments.local_date: the
    engine's (:func:`create_mirror_engine`), else the default."""
    zone = bind.get_execution_options().get(_LOCAL_TIMEZONE)
    return zone if isinstance(zone, ZoneInfo) else ZoneInfo(DEFAULT_TIMEZONE)


def as_utc(moment: datetime) -> datetime:
    """A timestamp read back from the database, as aware UTC: SQLite hands back the naive UTC
    it stores, PostgreSQL an aware datetime in the session's zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextlib.contextmanager
def unavailable_as_error() -> Iterator[None]:
    """Turn "cannot reach or lock the database" into :class:`DatabaseUnavailable`."""
    try:
        yield
    except (exc.OperationalError, exc.InterfaceError) as error:
        raise DatabaseUnavailable(_describe(error)) from error
    except _driver_unavailable() as error:
        # Raised by statements run on the driver's cursor (mirror.driver), which SQLAlchemy
        # does not wrap. Only the first line: it names the failure, not the data.
        raise DatabaseUnavailable(str(error).splitlines()[0][:200]) from error
    except exc.DBAPIError as error:
        if error.connection_invalidated or _read_only(error.orig):
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
    return _read_only(cause)


def _loaded_psycopg() -> ModuleType | None:
    # Only a PostgreSQL engine loads psycopg (SQLAlchemy does, at create_engine); before that
    # no psycopg error can arise, and a command on SQLite spares the 0.1 s of CPU its import
    # costs.
    return sys.modules.get("psycopg")


def _driver_unavailable() -> tuple[type[BaseException], ...]:
    """The drivers' errors that mean the database is away or refuses writes."""
    psycopg = _loaded_psycopg()
    if psycopg is None:
        return (sqlite3.OperationalError,)
    return (sqlite3.OperationalError, psycopg.OperationalError, psycopg.InterfaceError,
            psycopg.errors.ReadOnlySqlTransaction)  # fmt: skip


def _read_only(cause: BaseException | None) -> bool:
    psycopg = _loaded_psycopg()
    return psycopg is not None and isinstance(cause, psycopg.errors.ReadOnlySqlTransaction)


@contextlib.contextmanager
def _replaced_when_broken(connection: Connection) -> Iterator[None]:
    try:
        yield
    except Exception as error:
        if _stays_broken(error):
            connection.invalidate()  # closed now; the pool opens a new one next time
        raise


# SQLite has one writer at a time, and a writer that finds the lock taken sleeps in its busy
# handler's steps (1, 2, 5 ... 100 ms) before it looks again: threads of one process that write
# at once (a page of audit rows per FHIR search) queued that way for up to 100 ms each. They
# queue on a lock of the process instead, which hands over the moment a writer is done.
_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()


def write_transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run ``work`` in one short write transaction; unavailability raises DatabaseUnavailable."""
    with (
        _SQLITE_WRITERS.get(engine) or contextlib.nullcontext(),
        unavailable_as_error(),
        engine.connect() as connection,
        _replaced_when_broken(connection),
        connection.begin(),
    ):
        return work(connection)


def snapshot_transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run ``work`` in one read-only transaction that sees one snapshot throughout: REPEATABLE
    READ on PostgreSQL (READ COMMITTED would take a new one at each statement); on SQLite a
    read transaction in WAL mode keeps the snapshot of its first read."""
    options: dict[str, Any] = {"sqlite_begin": "DEFERRED"}
    if engine.dialect.name == "postgresql":
        options.update(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    with (
        unavailable_as_error(),
        engine.connect().execution_options(**options) as connection,
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
