"""Fill a mirror database with the fake HealthDock's population, for bench/fhir's searches.

The rows are the ones the service's writer stores: every record becomes the write a backfill
makes of it (``sync.passes.listed_write``), and every 100th record (index 50, 150, ...) is then
deleted, as a webhook's delete would (see :func:`tombstoned`). Two ways to store them:

- ``writer``: through ``mirror.records.apply_writes``, ``--batch`` writes a transaction: the
  real thing, about 19,000 records/s on SQLite and 12,000 on PostgreSQL on two cores, so over
  8 minutes for 6 million records on PostgreSQL.
- ``direct`` (the default): the same rows, built with the writer's own pieces (the ordering
  guard's ``merge``, ``typed_columns``, ``mirror.driver``'s value forms), written by bulk
  insert: ``COPY`` on PostgreSQL, ``executemany`` in one transaction with bulk-load pragmas on
  SQLite. ``--verify`` (and tests/test_bench_fhir_seed.py) checks that both give equal rows.

The schema comes from the project's migrations (``mirror.upgrade``), indexes included, so
searches meet the indexes a real mirror has. The population is streamed a batch at a time.

    .venv/bin/python -m bench.fhir.seed /tmp/fhir_bench.db
    .venv/bin/python -m bench.fhir.seed postgresql://postgres@127.0.0.1:5432/fhir_bench --replace
    .venv/bin/python -m bench.fhir.seed postgresql://postgres@127.0.0.1:5432/fhir_bench --verify
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import multiprocessing
import os
import sqlite3
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import psycopg
from psycopg import sql
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from sqlalchemy import Engine, inspect, make_url, text

from config import DEFAULT_TIMEZONE
from fake_healthdock.clock import format_millis, ist_midnight, parse_millis
from fake_healthdock.population import Population
from mirror import (
    Action,
    RecordWrite,
    Resource,
    apply_writes,
    create_mirror_engine,
    record_write,
    sqlite_file,
    upgrade,
    write_transaction,
)
from mirror.driver import Driver
from mirror.guard import RecordState, merge
from mirror.records import typed_columns
from mirror.schema import MIRRORED_TABLES
from mirror.versions import VersionKey, parse_instant
from sync.passes import listed_write

Method = Literal["direct", "writer"]
METHODS: tuple[Method, ...] = ("direct", "writer")

DEFAULT_PATIENTS = 1_000_000
DEFAULT_APPOINTMENTS = 5_000_000
DEFAULT_SEED = 0
# A fixed anchor (00:00 IST that day) keeps the database the same on every run: appointments
# fall in the 8 weeks before it and the 4 weeks after (fake_healthdock.population).
DEFAULT_ANCHOR = date(2026, 12, 1)
DEFAULT_BATCH = 10_000
# Building a row costs several times writing it: two cores build, while the writer waits on
# the database (and PostgreSQL's server uses a core of its own).
DEFAULT_WORKERS = os.cpu_count() or 1
TOMBSTONE_EVERY = 100
# PostgreSQL databases a --replace must never drop: the server's own, and the test suite's.
PROTECTED_DATABASES = frozenset({"postgres", "template0", "template1", "test"})
# Tables that hold what a mirror received; any row in one makes the database non-empty.
DATA_TABLES = ("patients", "appointments", "webhook_events", "sync_runs")
# The writer's bookkeeping columns (mirror.records), after the typed ones.
BOOKKEEPING = ("raw", "content_version", "deleted_version", "deleted_at", "source_version",
               "mirrored_at")  # fmt: skip
# Different on every run by design: compared by presence only.
UNCOMPARED = frozenset({"mirrored_at"})


class SeedError(Exception):
    """The database cannot be seeded as asked (not empty, protected, schema unknown, ...)."""


def tombstoned(index: int) -> bool:
    """Whether generated record ``index`` (1-based) is deleted in the seeded mirror: 1 in 100."""
    return index % TOMBSTONE_EVERY == TOMBSTONE_EVERY // 2


@dataclass(frozen=True, slots=True)
class Plan:
    """What to seed: the population (seed, sizes, anchor) and how to write it."""

    patients: int = DEFAULT_PATIENTS
    appointments: int = DEFAULT_APPOINTMENTS
    seed: int = DEFAULT_SEED
    anchor: date = DEFAULT_ANCHOR
    method: Method = "direct"
    batch: int = DEFAULT_BATCH
    timezone: str = DEFAULT_TIMEZONE
    workers: int = 0  # processes building direct rows beside the one writing them; 0: none

    def population(self) -> Population:
        return _population(self.seed, self.patients, self.appointments, self.anchor)

    def count(self, resource: Resource) -> int:
        return self.patients if resource is Resource.PATIENT else self.appointments


@dataclass(slots=True)
class TableReport:
    rows: int = 0
    tombstoned: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class SeedReport:
    database: str  # the URL without its password
    plan: Plan
    tables: dict[str, TableReport] = field(default_factory=dict)
    migrate_seconds: float = 0.0
    finish_seconds: float = 0.0  # PostgreSQL: VACUUM ANALYZE; SQLite: back to WAL
    total_seconds: float = 0.0
    size_bytes: int = 0

    @property
    def rows(self) -> int:
        return sum(table.rows for table in self.tables.values())

    @property
    def load_seconds(self) -> float:
        return sum(table.seconds for table in self.tables.values())


# --- the records, as the writer receives them ----------------------------------------------


def _deleted_at(updated_at: str, anchor_ms: int) -> str:
    """When a tombstoned record was deleted: halfway from its last update to the anchor."""
    return format_millis((parse_millis(updated_at) + anchor_ms) // 2)


def record_writes(population: Population, resource: Resource, first: int, last: int
                  ) -> list[RecordWrite]:  # fmt: skip
    """The writes of records ``first``..``last`` (inclusive): each as a backfill lists it, and
    a delete after it for the tombstoned ones."""
    generate = population.patient if resource is Resource.PATIENT else population.appointment
    anchor_ms = ist_midnight(population.anchor) * 1000
    writes: list[RecordWrite] = []
    for index in range(first, last + 1):
        record: dict[str, Any] = msgspec.to_builtins(generate(index))
        write = listed_write(resource, record)
        assert write is not None, "the population generated a record the mirror refuses"
        writes.append(write)
        if tombstoned(index):
            when = _deleted_at(record["updated_at"], anchor_ms)
            writes.append(record_write(resource, Action.DELETE, when, {"id": record["id"]}))
    return writes


def _batches(plan: Plan, resource: Resource) -> Iterator[tuple[int, int]]:
    count = plan.count(resource)
    for first in range(1, count + 1, plan.batch):
        yield first, min(count, first + plan.batch - 1)


# --- direct rows: what apply_writes would insert, built from the writer's own parts --------


class RowBuilder:
    """The rows ``apply_writes`` inserts for records the mirror has never seen, as tuples in
    :attr:`columns` order. Fails early if the table has a column this does not know how to
    fill: better no benchmark than one over rows the service would never write."""

    def __init__(self, resource: Resource, driver: Driver, zone: ZoneInfo,
                 table_columns: Sequence[str]) -> None:  # fmt: skip
        self.resource = resource
        self.driver = driver
        self.zone = zone
        # The typed columns and those derived from them (an appointment's local_date).
        self.columns = ["id", *typed_columns(resource, {}, zone), *BOOKKEEPING]
        table = MIRRORED_TABLES[resource.value].name
        unknown = sorted(set(table_columns) - set(self.columns))
        missing = sorted(set(self.columns) - set(table_columns))
        if unknown or missing:
            raise SeedError(
                f"{table}: the seeder does not fill {unknown or 'nothing'}, and the table lacks "
                f"{missing or 'nothing'}: update bench/fhir/seed.py (or seed with --method writer)"
            )

    def row(self, record_id: str, state: RecordState, stamp: object) -> tuple[object, ...]:
        """Mirrors ``mirror.records._row`` for a row inserted whole (``old`` absent)."""
        driver = self.driver
        assert state.content_version is not None, "a seeded record always has content"
        deleted_at = None
        if state.deleted and state.deleted_version is not None:
            deleted_at = parse_instant(VersionKey(state.deleted_version).instant).to_datetime()
        version = state.version
        values: dict[str, object] = {}
        for name, value in typed_columns(self.resource, state.fields, self.zone).items():
            # As the writer's driver forms: SQLAlchemy's text on SQLite, objects for psycopg.
            values[name] = (
                driver.timestamp(value) if isinstance(value, datetime)
                else driver.date(value) if isinstance(value, date)
                else value
            )  # fmt: skip
        values.update(
            id=record_id,
            raw=driver.json(state.fields),
            content_version=state.content_version,
            deleted_version=state.deleted_version,
            deleted_at=driver.timestamp(deleted_at),
            source_version=VersionKey(version).instant if version else None,
            mirrored_at=stamp,
        )
        return tuple(values[name] for name in self.columns)

    def rows(self, writes: Sequence[RecordWrite], stamp: object) -> list[tuple[object, ...]]:
        """One row a record: its writes merged in order by the ordering guard."""
        states: dict[str, RecordState] = {}
        for write in writes:
            state = states.get(write.record_id) or RecordState()
            states[write.record_id], _ = merge(state, write.action, write.version, write.fields)
        return [self.row(record_id, state, stamp) for record_id, state in states.items()]


# --- the two ways to write ------------------------------------------------------------------

Advance = Callable[[Resource, int], None]  # rows written; 0 first, as the table begins


def _seed_writer(engine: Engine, plan: Plan, report: SeedReport, advance: Advance) -> None:
    population = plan.population()
    for resource in Resource:
        table = report.tables.setdefault(MIRRORED_TABLES[resource.value].name, TableReport())
        advance(resource, 0)
        started = time.perf_counter()
        for first, last in _batches(plan, resource):
            writes = record_writes(population, resource, first, last)
            write_transaction(engine, functools.partial(apply_writes, writes=writes))
            table.rows += last - first + 1
            table.tombstoned += len(writes) - (last - first + 1)
            advance(resource, last - first + 1)
        table.seconds = time.perf_counter() - started


Batch = tuple[list[tuple[object, ...]], int]  # rows, and the deletes among the writes


@functools.lru_cache(maxsize=2)
def _population(seed: int, patients: int, appointments: int, anchor: date) -> Population:
    return Population(seed=seed, patients=patients, appointments=appointments, anchor=anchor)


@functools.lru_cache(maxsize=4)
def _builder(resource: Resource, dialect: str, timezone: str, columns: tuple[str, ...]
             ) -> RowBuilder:  # fmt: skip
    return RowBuilder(resource, Driver(dialect), ZoneInfo(timezone), columns)


def batch_rows(plan: Plan, resource: Resource, dialect: str, columns: tuple[str, ...],
               first: int, last: int) -> Batch:  # fmt: skip
    """The rows of records ``first``..``last``, stamped as one apply_writes call stamps them.

    A pure function of its arguments (and the clock), so that worker processes can build
    batches side by side: each makes its population and builder once, on first use.
    """
    population = _population(plan.seed, plan.patients, plan.appointments, plan.anchor)
    builder = _builder(resource, dialect, plan.timezone, columns)
    writes = record_writes(population, resource, first, last)
    rows = builder.rows(writes, builder.driver.timestamp(datetime.now(UTC)))
    return rows, len(writes) - len(rows)


def _in_order(pool: Executor | None, build: Callable[[int, int], Batch],
              jobs: Iterator[tuple[int, int]], ahead: int) -> Iterator[Batch]:  # fmt: skip
    """``build`` over ``jobs``, in order; in ``pool`` at most ``ahead`` at a time (memory)."""
    if pool is None:
        yield from (build(*job) for job in jobs)
        return
    pending: deque[Future[Batch]] = deque()
    for job in jobs:
        pending.append(pool.submit(build, *job))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@dataclass(frozen=True, slots=True)
class _Source:
    """Where the direct rows come from: the plan, the tables' columns, the workers."""

    plan: Plan
    dialect: str
    columns: Mapping[Resource, tuple[str, ...]]
    pool: Executor | None
    report: SeedReport
    advance: Advance

    def written(self, resource: Resource) -> list[str]:
        """The columns of the rows, in their order."""
        return _builder(resource, self.dialect, self.plan.timezone, self.columns[resource]).columns

    def batches(self, resource: Resource) -> Iterator[list[tuple[object, ...]]]:
        """The table's rows a batch at a time, counted in the report as they are written."""
        name = MIRRORED_TABLES[resource.value].name
        table = self.report.tables.setdefault(name, TableReport())
        build = functools.partial(batch_rows, self.plan, resource, self.dialect,
                                  self.columns[resource])  # fmt: skip
        ahead = 2 * (self.plan.workers or 1)
        self.advance(resource, 0)
        started = time.perf_counter()
        for rows, deletes in _in_order(self.pool, build, _batches(self.plan, resource), ahead):
            yield rows
            table.rows += len(rows)
            table.tombstoned += deletes
            self.advance(resource, len(rows))
        table.seconds = time.perf_counter() - started


def _seed_direct(
    url: str, engine: Engine, plan: Plan, report: SeedReport, advance: Advance
) -> None:
    inspector = inspect(engine)
    columns = {
        resource: tuple(str(c["name"]) for c in inspector.get_columns(table.name))
        for resource, table in ((r, MIRRORED_TABLES[r.value]) for r in Resource)
    }
    dialect = engine.dialect.name
    for resource in Resource:  # refuses a table with columns it cannot fill, before any work
        _builder(resource, dialect, plan.timezone, columns[resource])
    engine.dispose()  # the bulk load's connection is the only one
    write = _copy_rows if dialect == "postgresql" else _sqlite_rows
    # Spawned, not forked: rich's refresh thread may hold a lock at the fork.
    pool = (
        ProcessPoolExecutor(plan.workers, mp_context=multiprocessing.get_context("spawn"))
        if plan.workers
        else None
    )
    try:
        write(url, _Source(plan, dialect, columns, pool, report, advance))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _sqlite_rows(url: str, source: _Source) -> None:
    path = sqlite_file(url)
    if path is None:
        raise SeedError(f"{url}: a SQLite URL must name a file")
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        # Bulk load: no fsync and an in-memory rollback journal (an empty file has nearly no
        # page to journal); a big cache keeps the indexes' pages in memory. The service's
        # engine sets its own pragmas on every connection; WAL is put back below.
        for pragma in ("journal_mode=MEMORY", "synchronous=OFF", "cache_size=-1048576",
                       "temp_store=MEMORY", "locking_mode=EXCLUSIVE"):  # fmt: skip
            connection.execute(f"PRAGMA {pragma}")
        connection.execute("BEGIN IMMEDIATE")
        for resource in Resource:
            table = MIRRORED_TABLES[resource.value].name
            names = source.written(resource)
            statement = (
                f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
            )
            for rows in source.batches(resource):
                connection.executemany(statement, rows)
        connection.execute("COMMIT")
        started = time.perf_counter()
        connection.execute("PRAGMA locking_mode=NORMAL")
        connection.execute("PRAGMA journal_mode=WAL")
        source.report.finish_seconds = time.perf_counter() - started
    finally:
        connection.close()


def _copy_rows(url: str, source: _Source) -> None:
    with psycopg.connect(_libpq_url(url)) as connection:
        # Both tables in one transaction: an interrupted seed leaves the database empty.
        with connection.cursor() as cursor:
            for resource in Resource:
                statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
                    sql.Identifier(MIRRORED_TABLES[resource.value].name),
                    sql.SQL(", ").join(sql.Identifier(c) for c in source.written(resource)),
                )
                with cursor.copy(statement) as copy:
                    for rows in source.batches(resource):
                        for row in rows:
                            copy.write_row(row)
        connection.commit()


def _vacuum_analyze(url: str) -> None:
    """What autovacuum does to a real mirror sooner or later: statistics for the planner, and
    the visibility map that index-only scans need."""
    with psycopg.connect(_libpq_url(url), autocommit=True) as connection:
        for table in (t.name for t in MIRRORED_TABLES.values()):
            connection.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))


# --- the database: created, replaced, migrated, refused -------------------------------------


def database_url(target: str) -> str:
    """A URL for ``target``: a database URL as given, or a SQLite file path."""
    if "://" in target:
        return target
    return f"sqlite:///{Path(target).expanduser().resolve()}"


def _is_postgres(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def _libpq_url(url: str) -> str:
    """The URL as libpq takes it: SQLAlchemy's driver name dropped, the rest as written (a
    URL rendered again by SQLAlchemy spells spaces in ``options`` as ``+``, which libpq keeps)."""
    scheme, separator, rest = url.partition("://")
    return f"postgresql{separator}{rest}" if scheme.startswith("postgresql") else url


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _server_url(url: str) -> str:
    """The same server's maintenance database, to create and drop others from."""
    return _other_database(url, "postgres")


def _other_database(url: str, name: str) -> str:
    """Database ``name`` on ``url``'s server, as ``url`` reaches it (its ``options``, such as
    a search_path, are the seeded database's own)."""
    parsed = make_url(url)
    query = {key: value for key, value in parsed.query.items() if key != "options"}
    other = parsed.set(drivername="postgresql", database=name, query=query)
    return other.render_as_string(hide_password=False)


def _pg_database(url: str) -> str:
    name = make_url(url).database
    if not name:
        raise SeedError(f"{_shown(url)}: name the database to seed, e.g. /fhir_bench")
    return name


def _protected(name: str) -> bool:
    test_url = os.environ.get("HEALTHDOCK_TEST_POSTGRES_URL")
    return name in PROTECTED_DATABASES or (
        test_url is not None and make_url(test_url).database == name
    )


def prepare_database(url: str, *, replace: bool) -> None:
    """Make ``url`` an empty database to seed: dropped and created afresh with ``replace``,
    else created if absent (PostgreSQL) and refused unless it holds no data."""
    if _is_postgres(url):
        _prepare_postgres(url, replace=replace)
    else:
        path = sqlite_file(url)
        if path is None:
            raise SeedError(f"{url}: a SQLite URL must name a file")
        if replace:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    if not replace:
        _refuse_data(url)


def _prepare_postgres(url: str, *, replace: bool) -> None:
    name = _pg_database(url)
    if replace and _protected(name):
        raise SeedError(
            f"--replace refuses to drop database {name!r}; seed another, e.g. fhir_bench"
        )
    with psycopg.connect(_server_url(url), autocommit=True) as connection:
        identifier = sql.Identifier(name)
        if replace:
            # FORCE: a benchmark's server may still hold connections to it.
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier)
            )
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if exists.fetchone() is None:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(identifier))


def _refuse_data(url: str) -> None:
    engine = create_mirror_engine(url)
    try:
        present = set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            holding = [
                table
                for table in DATA_TABLES
                if table in present
                and connection.execute(text(f"SELECT 1 FROM {table} LIMIT 1")).first()
            ]
    finally:
        engine.dispose()
    if holding:
        raise SeedError(
            f"{_shown(url)} is not empty ({', '.join(holding)} hold rows): pass --replace to "
            "drop it and seed afresh"
        )


def database_size(url: str) -> int:
    """Bytes on disk: the SQLite file (with its WAL), or the PostgreSQL database."""
    if not _is_postgres(url):
        path = sqlite_file(url)
        assert path is not None
        return sum(
            Path(f"{path}{suffix}").stat().st_size
            for suffix in ("", "-wal")
            if Path(f"{path}{suffix}").exists()
        )
    with psycopg.connect(_libpq_url(url)) as connection:
        row = connection.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


# --- seeding --------------------------------------------------------------------------------


def seed(url: str, plan: Plan | None = None, *, replace: bool = False,
         progress: Progress | None = None) -> SeedReport:  # fmt: skip
    """Seed ``url`` (a SQLite or PostgreSQL URL) with ``plan``'s population, migrating it first.

    Refuses a database that holds data unless ``replace`` (which drops it first). Progress,
    when given, gets one task per table.
    """
    plan = plan or Plan()
    if plan.method not in METHODS:
        raise SeedError(f"unknown method {plan.method!r}; use one of {', '.join(METHODS)}")
    try:
        zone = ZoneInfo(plan.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SeedError(f"timezone {plan.timezone!r} is not an IANA zone name") from None
    report = SeedReport(_shown(url), plan)
    began = time.perf_counter()
    prepare_database(url, replace=replace)
    engine = create_mirror_engine(url, local_timezone=zone)
    tasks = {}
    if progress is not None:
        for resource in Resource:
            name = MIRRORED_TABLES[resource.value].name
            tasks[resource] = progress.add_task(name, total=plan.count(resource), start=False)

    def advance(resource: Resource, rows: int) -> None:
        if progress is None:
            return
        if not rows:
            progress.start_task(tasks[resource])
        progress.advance(tasks[resource], rows)

    try:
        upgrade(engine)
        report.migrate_seconds = time.perf_counter() - began
        if plan.method == "writer":
            _seed_writer(engine, plan, report, advance)
        else:
            _seed_direct(url, engine, plan, report, advance)
    finally:
        engine.dispose()
    started = time.perf_counter()
    if _is_postgres(url):
        _vacuum_analyze(url)
    report.finish_seconds += time.perf_counter() - started
    report.total_seconds = time.perf_counter() - began
    report.size_bytes = database_size(url)
    return report


# --- verification: direct rows against the writer's -----------------------------------------


def table_rows(url: str, table: str) -> tuple[list[str], list[tuple[object, ...]]]:
    """Every column of ``table`` and its rows by id, as the database holds them (PostgreSQL:
    as text, so JSON and timestamps compare exactly)."""
    engine = create_mirror_engine(url)
    try:
        columns = [str(c["name"]) for c in inspect(engine).get_columns(table)]
        cast = "::text" if _is_postgres(url) else ""
        selected = ", ".join(f'"{c}"{cast}' for c in columns)
        with engine.connect() as connection:
            rows = connection.execute(text(f"SELECT {selected} FROM {table} ORDER BY id"))
            return columns, [tuple(row) for row in rows]
    finally:
        engine.dispose()


def row_differences(expected_url: str, actual_url: str) -> list[str]:
    """How ``actual_url``'s mirrored rows differ from ``expected_url``'s: ids and column names
    only, never values. ``mirrored_at`` must be set in both; its value is not compared."""
    differences: list[str] = []
    for table in (t.name for t in MIRRORED_TABLES.values()):
        expected_columns, expected = table_rows(expected_url, table)
        actual_columns, actual = table_rows(actual_url, table)
        if expected_columns != actual_columns:
            differences.append(f"{table}: columns {expected_columns} != {actual_columns}")
            continue
        if len(expected) != len(actual):
            differences.append(f"{table}: {len(expected)} rows != {len(actual)}")
        for want, got in zip(expected, actual, strict=False):
            for name, a, b in zip(expected_columns, want, got, strict=True):
                if name in UNCOMPARED:
                    if a is None or b is None:
                        differences.append(f"{table} {want[0]}: {name} is not set")
                elif a != b:
                    differences.append(f"{table} {want[0]}: {name} differs")
            if len(differences) > 20:
                return [*differences, "..."]
    return differences


@contextlib.contextmanager
def scratch_databases(url: str) -> Iterator[tuple[str, str]]:
    """Two empty scratch databases of ``url``'s kind, removed afterwards: SQLite files in a
    temporary directory, or ``<database>_verify_writer`` and ``_direct`` on its server."""
    if not _is_postgres(url):
        with tempfile.TemporaryDirectory(prefix="fhir_seed_verify_") as directory:
            yield (database_url(f"{directory}/writer.db"), database_url(f"{directory}/direct.db"))
        return
    base = _pg_database(url)
    urls = tuple(_other_database(url, f"{base}_verify_{m}") for m in ("writer", "direct"))
    try:
        yield urls[0], urls[1]
    finally:
        with psycopg.connect(_server_url(url), autocommit=True) as connection:
            for scratch in urls:
                name = sql.Identifier(_pg_database(scratch))
                connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def verify(url: str, plan: Plan, progress: Progress | None = None) -> list[str]:
    """Seed ``plan`` by the writer and directly into scratch databases beside ``url``; return
    how the direct rows differ from the writer's (nothing: they are equal)."""
    with scratch_databases(url) as (writer_url, direct_url):
        seed(
            writer_url, dataclasses.replace(plan, method="writer"), replace=True, progress=progress
        )
        seed(
            direct_url, dataclasses.replace(plan, method="direct"), replace=True, progress=progress
        )
        return row_differences(writer_url, direct_url)


# --- the command line -----------------------------------------------------------------------


class RateColumn(ProgressColumn):
    """Rows per second, over rich's recent window."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} rows/s", style="progress.data.speed")


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _summary(report: SeedReport) -> str:
    plan = report.plan
    lines = [
        f"seeded {report.database} ({plan.method}, seed {plan.seed}, anchor {plan.anchor}, "
        f"batch {plan.batch:,}, local dates in {plan.timezone})",
    ]
    for name, table in report.tables.items():
        rate = table.rows / table.seconds if table.seconds else 0.0
        lines.append(f"  {name:<13}{table.rows:>11,} rows ({table.tombstoned:,} tombstoned) "
                     f"in {table.seconds:7.1f} s = {rate:>9,.0f} rows/s")  # fmt: skip
    load_rate = report.rows / report.load_seconds if report.load_seconds else 0.0
    lines += [
        f"  {'both':<13}{report.rows:>11,} rows in {report.load_seconds:7.1f} s "
        f"= {load_rate:>9,.0f} rows/s",
        f"  migrate {report.migrate_seconds:.1f} s, finish {report.finish_seconds:.1f} s "
        f"({'VACUUM ANALYZE' if _is_postgres(report.database) else 'journal back to WAL'}), "
        f"total {report.total_seconds:.1f} s",
        f"  on disk: {report.size_bytes / 2**20:,.0f} MiB",
    ]
    return "\n".join(lines)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fhir.seed",
        description="Fill a mirror database with the fake HealthDock's population.",
    )
    parser.add_argument("database", help="a SQLite file path or URL, or a postgresql:// URL")
    parser.add_argument(
        "--patients", type=int, default=None, help=f"default {DEFAULT_PATIENTS:,} (--verify: 3,000)"
    )
    parser.add_argument(
        "--appointments",
        type=int,
        default=None,
        help=f"default {DEFAULT_APPOINTMENTS:,} (--verify: 15,000)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the population's seed")
    parser.add_argument(
        "--anchor",
        type=date.fromisoformat,
        default=DEFAULT_ANCHOR,
        help=f"the population's day 0, YYYY-MM-DD (default {DEFAULT_ANCHOR})",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="direct",
        help="bulk rows (default) or mirror.records.apply_writes",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH,
        help=f"records per batch (writer: per transaction); {DEFAULT_BATCH:,}",
    )
    parser.add_argument(
        "--timezone",
        default=os.environ.get("HEALTHDOCK_TIMEZONE") or DEFAULT_TIMEZONE,
        help=f"zone of appointments.local_date (HEALTHDOCK_TIMEZONE, else {DEFAULT_TIMEZONE})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"direct: processes that build rows beside the writer; 0 builds them in it "
        f"(default {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="drop the database (PostgreSQL) or file (SQLite) and seed afresh",
    )
    parser.add_argument("--verify", action="store_true",
                        help="seed a small population both ways into scratch databases beside "
                        "DATABASE (left untouched) and compare the rows")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _arguments(argv)
    console = Console(stderr=True)
    small = arguments.verify
    plan = Plan(
        patients=arguments.patients or (3_000 if small else DEFAULT_PATIENTS),
        appointments=arguments.appointments or (15_000 if small else DEFAULT_APPOINTMENTS),
        seed=arguments.seed,
        anchor=arguments.anchor,
        method=arguments.method,
        batch=arguments.batch if not small else min(arguments.batch, 1_000),
        timezone=arguments.timezone,
        workers=max(0, arguments.workers),
    )
    url = database_url(arguments.database)
    try:
        if _is_postgres(url) and _protected(_pg_database(url)):
            # seed() would fill an empty one; from the command line, never the suite's.
            raise SeedError(
                f"refusing database {_pg_database(url)!r}: seed one of its own, e.g. fhir_bench"
            )
        with _progress(console) as progress:
            if arguments.verify:
                differences = verify(url, plan, progress)
            else:
                report = seed(url, plan, replace=arguments.replace, progress=progress)
    except SeedError as error:
        console.print(Text.assemble(("error: ", "red"), str(error)), soft_wrap=True)
        return 2
    if arguments.verify:
        if differences:
            console.print("direct rows differ from the writer's:", style="red")
            console.print("\n".join(differences), markup=False, soft_wrap=True)
            return 1
        console.print(
            f"direct rows equal the writer's: {plan.patients:,} patients and "
            f"{plan.appointments:,} appointments on {make_url(url).get_backend_name()}",
            soft_wrap=True,
        )
        return 0
    print(_summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
