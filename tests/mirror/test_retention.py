"""Payload retention: only applied events lose their raw body, once old enough."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, update

from config import SettingsError, load_settings
from mirror.eventlog import Outcome, store_events
from mirror.ingest import ingest
from mirror.retention import prune_event_payloads
from mirror.schema import webhook_events
from mirror.states import EventStatus
from sync.schedule import RETENTION_JOB, build_scheduler
from tests.conftest import make_settings
from tests.factories import event, patient
from tests.support.stored_events import (
    events_by_seq,
    fix_the_cause,
    incoming,
    refuse_patient,
    table_contents,
)

RETENTION = timedelta(days=30)
NOW = datetime.now(UTC)


def _one_of_each(engine: Engine) -> dict[str, int]:
    """An applied, a failed, an ignored and a pending event; seq by kind."""
    refuse_patient(engine, "FAILS")
    ingest(
        engine,
        [
            incoming(event("patient.created", patient("OK"))),
            incoming(event("patient.created", patient("FAILS"))),
            incoming(event("invoice.paid", {"invoice_id": "INV1"})),
        ],
    )
    fix_the_cause(engine)
    with engine.begin() as connection:
        store_events(
            connection,
            [(incoming(event("patient.updated", patient("LATER"))), Outcome(EventStatus.PENDING))],
        )
    by_status = {row.status: seq for seq, row in events_by_seq(engine).items()}
    assert set(by_status) == {"applied", "failed", "ignored", "pending"}
    return by_status


def _applied_days_ago(engine: Engine, seqs: list[int], days: float) -> None:
    """Age events as if they had been received and applied ``days`` ago."""
    moment = NOW - timedelta(days=days)
    with engine.begin() as connection:
        connection.execute(
            update(webhook_events)
            .where(webhook_events.c.seq.in_(seqs))
            .values(received_at=moment, applied_at=moment)
        )


def test_only_applied_events_older_than_the_period_lose_their_payload(engine: Engine) -> None:
    seq = _one_of_each(engine)
    ingest(engine, [incoming(event("patient.created", patient("RECENT")))])
    recent = max(events_by_seq(engine))
    _applied_days_ago(engine, list(seq.values()), 31)
    _applied_days_ago(engine, [recent], 29)

    removed = prune_event_payloads(engine, RETENTION, now=NOW)

    assert removed == 1
    rows = events_by_seq(engine)
    assert rows[seq["applied"]].body is None
    assert rows[seq["applied"]].body_pruned_at is not None
    # What the row says about the event stays.
    assert (rows[seq["applied"]].status, rows[seq["applied"]].record_id) == ("applied", "OK")
    for kept in (seq["failed"], seq["ignored"], seq["pending"], recent):
        assert rows[kept].body is not None
        assert rows[kept].body_pruned_at is None
    assert prune_event_payloads(engine, RETENTION, now=NOW) == 0


def test_the_period_runs_from_when_an_event_was_applied(engine: Engine) -> None:
    ingest(engine, [incoming(event("patient.created", patient("PAT1")))])
    [seq] = events_by_seq(engine)
    _applied_days_ago(engine, [seq], 40)
    with engine.begin() as connection:  # received long ago, applied (replayed) yesterday
        connection.execute(update(webhook_events).values(applied_at=NOW - timedelta(days=1)))
    assert prune_event_payloads(engine, RETENTION, now=NOW) == 0
    assert prune_event_payloads(engine, RETENTION, now=NOW + timedelta(days=30)) == 1


def test_pruning_in_small_batches_prunes_everything_due(engine: Engine) -> None:
    ingest(engine, [incoming(event("patient.created", patient(f"P{n}"))) for n in range(7)])
    refuse_patient(engine, "BAD")
    ingest(engine, [incoming(event("patient.created", patient("BAD")))])
    _applied_days_ago(engine, list(events_by_seq(engine)), 90)

    assert prune_event_payloads(engine, RETENTION, now=NOW, batch_size=2) == 7
    assert [row.record_id for row in events_by_seq(engine).values() if row.body] == ["BAD"]


def test_pruning_leaves_the_mirror_alone(engine: Engine) -> None:
    ingest(engine, [incoming(event("patient.created", patient("PAT1")))])
    before = table_contents(engine)["patients"]
    prune_event_payloads(engine, RETENTION, now=NOW + timedelta(days=31))
    assert table_contents(engine)["patients"] == before


def test_the_scheduler_prunes_hourly_when_retention_is_set(
    engine: Engine, database_url: str
) -> None:
    seq = _one_of_each(engine)
    _applied_days_ago(engine, list(seq.values()), 8)

    unset = build_scheduler(make_settings(database_url), engine)
    assert unset.get_job(RETENTION_JOB) is None

    scheduler = build_scheduler(make_settings(database_url, event_retention_days=7), engine)
    job = scheduler.get_job(RETENTION_JOB)
    assert job is not None
    assert job.trigger.interval == timedelta(hours=1)
    asyncio.run(job.func())
    rows = events_by_seq(engine)
    assert [s for s, row in rows.items() if row.body is None] == [seq["applied"]]


def test_retention_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHDOCK_EVENT_RETENTION_DAYS", "0")
    with pytest.raises(SettingsError, match="HEALTHDOCK_EVENT_RETENTION_DAYS"):
        load_settings(_env_file=None)
    monkeypatch.setenv("HEALTHDOCK_EVENT_RETENTION_DAYS", "")
    assert load_settings(_env_file=None).event_retention_days is None
    monkeypatch.setenv("HEALTHDOCK_EVENT_RETENTION_DAYS", "90")
    assert load_settings(_env_file=None).event_retention_days == 90
