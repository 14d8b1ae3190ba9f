"""A pass that dies of a bug is recorded ``failed`` (its error's type only), and the next pass
starts afresh instead of resuming the dead one; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import Engine, select

from mirror.events import Resource
from mirror.schema import sync_runs
from sync import PassOptions, PassResult, reconcile
from tests.sync.conftest import Upstream, mirror_of, truth_of

OPTIONS = PassOptions(page_size=100, concurrency=2)
SECRET_NAME = "Zubeida-Quixotic"  # would be patient data, if it reached a message


def _run(engine: Engine, upstream: Upstream) -> PassResult:
    async def go() -> PassResult:
        async with upstream.client() as client:
            return await reconcile(engine, client, Resource.PATIENT, OPTIONS)

    return asyncio.run(go())


def _break_writes_of(engine: Engine, record_id: str) -> None:
    """A database trigger that refuses to store one record with an error none of our code
    expects (SQLite: an IntegrityError; PostgreSQL: a raised exception, InternalError): the
    stand-in for a bug in the write path, without mocking any of our modules."""
    with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql(
                f"CREATE TRIGGER broken BEFORE INSERT ON patients WHEN NEW.id = '{record_id}' "
                f"BEGIN SELECT RAISE(ABORT, '{SECRET_NAME}'); END"
            )
        else:
            connection.exec_driver_sql(
                "CREATE FUNCTION broken() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.id = '{record_id}' THEN RAISE EXCEPTION '{SECRET_NAME}'; END IF; "
                "RETURN NEW; END $$"
            )
            connection.exec_driver_sql(
                "CREATE TRIGGER broken BEFORE INSERT ON patients FOR EACH ROW "
                "EXECUTE FUNCTION broken()"
            )


def _mend(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TRIGGER broken" + (
            "" if connection.dialect.name == "sqlite" else " ON patients"
        ))  # fmt: skip


def _runs(engine: Engine) -> list[tuple[int, str, str, str | None]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(sync_runs.c.id, sync_runs.c.kind, sync_runs.c.outcome, sync_runs.c.error)
            .where(sync_runs.c.resource == "patient")
            .order_by(sync_runs.c.id)
        )
        return [(row.id, row.kind, row.outcome, row.error) for row in rows]


def test_a_pass_that_dies_of_a_bug_is_failed_and_not_resumed(
    engine: Engine, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    # A record of the second page: the pass has written some when it dies.
    _break_writes_of(engine, list(upstream.records(Resource.PATIENT))[150]["id"])
    with caplog.at_level(logging.ERROR, logger="sync.reconcile"):
        dead = _run(engine, upstream)
    assert dead.outcome == "failed"
    [(run_id, kind, outcome, error)] = _runs(engine)
    assert (run_id, outcome) == (dead.run_id, "failed")
    # The error's type only: its text could carry a record's data.
    assert error is not None
    assert error.isidentifier()
    assert SECRET_NAME not in error
    assert any("failed" in r.getMessage() and error in r.getMessage() for r in caplog.records)
    assert all(SECRET_NAME not in r.getMessage() for r in caplog.records)

    # The bug is fixed: a new pass, not the dead one resumed for ever.
    _mend(engine)
    healed = _run(engine, upstream)
    assert healed.outcome == "success", healed.error
    assert healed.run_id != dead.run_id
    assert [outcome for _, _, outcome, _ in _runs(engine)] == ["failed", "success"]
    assert mirror_of(engine, Resource.PATIENT) == truth_of(upstream, Resource.PATIENT)
    assert kind == "backfill"  # it never completed: the pass that did is the backfill
    assert [kind for _, kind, _, _ in _runs(engine)] == ["backfill", "backfill"]
