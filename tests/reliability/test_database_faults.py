"""The database failing under load: 503 with Retry-After while it lasts, recovery without a
restart, and every acknowledged event stored and applied.

A real ``healthdock-mirror serve`` takes events from eight concurrent senders that retry each
refused event, as HealthDock does. Meanwhile the database is taken away and given back,
several times: SQLite locked by another writer, SQLite's files made unwritable, PostgreSQL's
connections cut, PostgreSQL stalled (connections open, nothing answered), PostgreSQL turned
read-only (a failover onto a standby). Each test prints its counts (the README's Reliability
table quotes them).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from sqlalchemy import Engine

from mirror.database import create_mirror_engine
from mirror.migrate import upgrade
from tests.support.load import Ledger, Load, new_patients, stored_and_mirrored
from tests.support.network import DatabaseLink
from tests.support.read_only import (
    make_unwritable,
    make_writable,
    require_immutable_files,
    sqlite_files,
    writer_role,
)
from tests.support.services import Service, serve

CYCLES = 3
SENDERS = 8
# Short, so that a fault turns into 503s quickly; the receiver's default is 5 s.
TIMEOUT_SECONDS = 1.0


def _migrated(database_url: str) -> Iterator[Engine]:
    engine = create_mirror_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[tuple[Path, Engine]]:
    path = tmp_path / "db" / "mirror.db"
    path.parent.mkdir()
    for engine in _migrated(f"sqlite:///{path}"):
        yield path, engine


@pytest.fixture
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    yield from _migrated(postgres_url)


@contextlib.contextmanager
def receiver_under_load(
    database_url: str, tmp_path: Path, name: str
) -> Iterator[tuple[Service, Load]]:
    """A receiver on ``database_url`` taking events from ``SENDERS`` concurrent senders."""
    with (
        serve(
            database_url, tmp_path / "serve.log", database_timeout_seconds=TIMEOUT_SECONDS
        ) as receiver,
        Load([receiver.base_url], new_patients(name), senders=SENDERS) as load,
    ):
        yield receiver, load


def fault_cycles(
    load: Load,
    receiver: Service,
    break_it: Callable[[], None],
    heal: Callable[[], None],
    *,
    refusals: int = SENDERS,
) -> None:
    """Under load, break the database and heal it ``CYCLES`` times: each time the receiver
    must answer 503 while it is broken (``refusals`` times at least: the outage lasts) and
    acknowledge events again once it is healed."""
    for _ in range(CYCLES):
        load.wait_for_acknowledgements(100)
        break_it()
        try:
            load.wait_for_refusals(refusals)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{receiver.output()[-2000:]}") from None
        finally:
            heal()
    load.wait_for_acknowledgements(200)  # recovered, and the same process still serves


def check_nothing_lost(name: str, ledger: Ledger, engine: Engine, outages: int = CYCLES) -> None:
    lost = ledger.acknowledged - stored_and_mirrored(engine, ledger.acknowledged)
    print(f"\n{name}: outages={outages} {ledger.line()} lost={len(lost)}")
    assert not lost, f"{len(lost)} acknowledged events are not stored and applied"
    assert ledger.unavailable > 0
    assert ledger.unavailable_without_retry_after == 0
    assert set(ledger.answers) <= {200, 503}, ledger.line()  # never a 500
    assert ledger.timeouts == 0, "a request hung instead of being answered"


def test_sqlite_locked_by_another_writer(
    sqlite_database: tuple[Path, Engine], tmp_path: Path
) -> None:
    path, engine = sqlite_database
    # An analyst's long write, a backup tool: it holds SQLite's one write lock.
    holder = sqlite3.connect(path, isolation_level=None)
    with receiver_under_load(f"sqlite:///{path}", tmp_path, "locked") as (receiver, load):
        fault_cycles(
            load,
            receiver,
            lambda: holder.execute("BEGIN EXCLUSIVE").close(),
            lambda: holder.execute("ROLLBACK").close(),
        )
    holder.close()
    check_nothing_lost("sqlite locked", load.ledger, engine)


def test_sqlite_files_become_unwritable(
    sqlite_database: tuple[Path, Engine], tmp_path: Path
) -> None:
    """As when the file system is remounted read-only: writes through descriptors already
    open fail too (SQLite: disk I/O error)."""
    path, engine = sqlite_database
    require_immutable_files(path.parent)
    frozen: list[Path] = []

    def freeze() -> None:
        frozen[:] = sqlite_files(path)
        make_unwritable(frozen)

    with receiver_under_load(f"sqlite:///{path}", tmp_path, "frozen") as (receiver, load):
        fault_cycles(load, receiver, freeze, lambda: make_writable(frozen))
    check_nothing_lost("sqlite unwritable", load.ledger, engine)


def test_receiver_started_on_a_read_only_sqlite_file_recovers_once_it_is_writable(
    sqlite_database: tuple[Path, Engine], tmp_path: Path
) -> None:
    """A connection SQLite opened while the file was read-only stays read-only: the receiver
    must open a new one once the file is writable, not answer 503 until it is restarted."""
    path, engine = sqlite_database
    require_immutable_files(path.parent)
    files = sqlite_files(path)
    make_unwritable(files)
    try:
        with receiver_under_load(f"sqlite:///{path}", tmp_path, "read-only") as (_, load):
            load.wait_for_refusals(SENDERS)
            assert not load.ledger.acknowledged
            make_writable(files)
            load.wait_for_acknowledgements(200)  # the same process, writing again
    finally:
        make_writable(files)
    check_nothing_lost("sqlite read-only at start", load.ledger, engine, outages=1)


def _link(database_url: str) -> DatabaseLink:
    target = urlparse(database_url)
    return DatabaseLink(target.hostname or "127.0.0.1", target.port or 5432)


def _through(link: DatabaseLink, database_url: str) -> str:
    target = urlparse(database_url)
    return link.url(database_url, target.hostname or "127.0.0.1", target.port or 5432)


def test_postgres_connections_cut(
    postgres_url: str, postgres_engine: Engine, tmp_path: Path
) -> None:
    with (
        _link(postgres_url) as link,
        receiver_under_load(_through(link, postgres_url), tmp_path, "cut") as (receiver, load),
    ):
        fault_cycles(load, receiver, link.cut, link.restore)
    check_nothing_lost("postgresql cut", load.ledger, postgres_engine)


def test_postgres_stalled(postgres_url: str, postgres_engine: Engine, tmp_path: Path) -> None:
    """Connections stay open and nothing comes back (a partition, a hung server): no driver
    timeout ends that wait, so the receiver must stop waiting itself and answer 503."""
    with (
        _link(postgres_url) as link,
        receiver_under_load(_through(link, postgres_url), tmp_path, "stall") as (receiver, load),
    ):
        fault_cycles(load, receiver, link.stall, link.restore)
    check_nothing_lost("postgresql stalled", load.ledger, postgres_engine)


def test_postgres_failover_onto_a_read_only_standby(
    postgres_url: str, postgres_engine: Engine, tmp_path: Path
) -> None:
    """Connections drop and come back read-only, then the primary is back: 503 meanwhile
    (not a crash of the process that writes), and connections opened read-only are replaced."""
    with writer_role(postgres_url) as role, _link(postgres_url) as link:

        def fail_over() -> None:
            role.read_only(True)
            link.cut()
            link.restore()

        url = _through(link, role.url)
        with receiver_under_load(url, tmp_path, "standby") as (receiver, load):
            # The cut refuses one batch; the writes the read-only server refuses come after.
            fault_cycles(
                load, receiver, fail_over, lambda: role.read_only(False), refusals=3 * SENDERS
            )
        output = receiver.output()
    check_nothing_lost("postgresql read-only", load.ledger, postgres_engine)
    assert "Traceback" not in output
    assert "committer is not running" not in output
