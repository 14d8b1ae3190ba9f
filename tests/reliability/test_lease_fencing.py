"""Lease fencing, on SQLite and PostgreSQL, with real worker processes.

A lease holder frozen mid-pass (SIGSTOP: a long GC pause, a VM migration) past its lease
wakes up still holding a page it fetched and a pass it believes is its own. Its successor
took the lease meanwhile, with a greater fencing token, and resumed the pass. Every write of
a pass checks the lease's holder and token inside its own transaction and stamps the run row
with the token (``sync_runs.lease_token``): a trigger logs each write to ``sync_runs`` (page
progress, checkpoint, candidates, confirmations, finish, all in the same transactions as the
mirror writes they count), and after the successor's first write no write carries the frozen
holder's token.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from fake_healthdock import FakeHealthDock, Faults, serve_in_thread
from mirror.database import create_mirror_engine
from mirror.migrate import upgrade
from mirror.schema import leases, sync_runs
from tests.support.runs import run_outcome
from tests.support.services import worker
from tests.support.waiting import wait_for

API_KEY = "fencing-key"
LEASE_SECONDS = 2


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    migrated = create_mirror_engine(database_url)
    upgrade(migrated)
    yield migrated
    migrated.dispose()


def _log_run_writes(engine: Engine) -> None:
    """Every update of ``sync_runs`` is logged, in order, with the token the row was stamped
    with by that write."""
    with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql(
                "CREATE TABLE run_writes (seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id BIGINT, "
                "token BIGINT, outcome TEXT, pages INTEGER)"
            )
            connection.exec_driver_sql(
                "CREATE TRIGGER log_run_write AFTER UPDATE ON sync_runs BEGIN "
                "INSERT INTO run_writes (run_id, token, outcome, pages) "
                "VALUES (NEW.id, NEW.lease_token, NEW.outcome, NEW.pages); END"
            )
        else:
            connection.exec_driver_sql(
                "CREATE TABLE run_writes (seq bigserial PRIMARY KEY, run_id bigint, "
                "token bigint, outcome text, pages integer)"
            )
            connection.exec_driver_sql(
                "CREATE FUNCTION log_run_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "INSERT INTO run_writes (run_id, token, outcome, pages) "
                "VALUES (NEW.id, NEW.lease_token, NEW.outcome, NEW.pages); RETURN NEW; END $$"
            )
            connection.exec_driver_sql(
                "CREATE TRIGGER log_run_write AFTER UPDATE ON sync_runs "
                "FOR EACH ROW EXECUTE FUNCTION log_run_write()"
            )


def _lease(engine: Engine) -> tuple[str, int] | None:
    with engine.connect() as connection:
        row = connection.execute(
            select(leases.c.holder, leases.c.token).where(leases.c.expires_at > datetime.now(UTC))
        ).first()
    return None if row is None else (str(row.holder), int(row.token))


def _pass_under_way(engine: Engine) -> tuple[int, str, int] | None:
    """A patients pass some pages in, its holder and that holder's token."""
    with engine.connect() as connection:
        run = connection.execute(
            select(sync_runs.c.id, sync_runs.c.checkpoint, sync_runs.c.lease_token).where(
                sync_runs.c.resource == "patient", sync_runs.c.outcome == "running"
            )
        ).first()
    lease = _lease(engine)
    if run is None or lease is None or int((run.checkpoint or {}).get("page", 0)) < 3:
        return None
    if run.lease_token != lease[1]:
        return None
    return int(run.id), lease[0], lease[1]


def _writes(engine: Engine) -> list[tuple[int, int, int | None, str]]:
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT seq, run_id, token, outcome FROM run_writes ORDER BY seq"
        ).all()
    return [(int(r[0]), int(r[1]), None if r[2] is None else int(r[2]), str(r[3])) for r in rows]


def test_a_frozen_lease_holder_writes_nothing_after_its_successor_took_over(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    _log_run_writes(engine)
    fake = FakeHealthDock(
        seed=11, patients=240, appointments_per_patient=0.5, api_key=API_KEY, rate_limit=None,
        faults=Faults(latency=(0.1, 0.15)),
    )  # fmt: skip
    settings = {
        "api_key": API_KEY, "sync_interval_minutes": 0.02, "sync_concurrency": 1,
        "sync_page_size": 10, "sync_lease_seconds": LEASE_SECONDS, "sync_upcoming_minutes": 60,
    }  # fmt: skip
    with serve_in_thread(fake) as base_url:
        url = f"{base_url}/v1"
        with (
            worker(database_url, tmp_path / "w0.log", api_url=url, **settings) as first,
            worker(database_url, tmp_path / "w1.log", api_url=url, **settings) as second,
        ):
            run_id, holder, frozen_token = wait_for(
                lambda: _pass_under_way(engine), "no pass got under way"
            )
            victim = first if holder.split(":")[-2] == str(first.pid) else second
            survivor = second if victim is first else first
            os.killpg(victim.pid, signal.SIGSTOP)
            try:
                # The lease lapses; the other worker takes it and makes progress with it.
                wait_for(
                    lambda: (
                        any(
                            token is not None and token > frozen_token
                            for _, _, token, _ in _writes(engine)
                        )
                        or None
                    ),
                    f"no takeover with progress:\n{survivor.output()[-3000:]}",
                )
            finally:
                os.killpg(victim.pid, signal.SIGCONT)
            wait_for(
                lambda: run_outcome(engine, run_id) == "success" or None,
                f"the pass was not finished:\n{survivor.output()[-3000:]}",
            )
            wait_for(
                lambda: "this reconcile stopped" in victim.output() or None,
                f"the woken holder did not stop:\n{victim.output()[-3000:]}",
            )
        writes = _writes(engine)
    taken_over = min(seq for seq, _, token, _ in writes if token and token > frozen_token)
    late = [w for w in writes if w[0] > taken_over and w[2] == frozen_token]
    print(
        f"\nfencing ({engine.dialect.name}): lease={LEASE_SECONDS}s run={run_id} "
        f"writes={len(writes)} frozen-holder-writes-after-takeover={len(late)}"
    )
    assert late == []
    assert [w for w in writes if w[0] > taken_over and w[2] is None] == []
