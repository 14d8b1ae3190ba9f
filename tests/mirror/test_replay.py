"""Replaying stored events into the mirror, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, func, select

from fake_healthdock import FakeHealthDock
from mirror.database import read_transaction
from mirror.eventlog import Outcome, store_events
from mirror.events import Resource
from mirror.feed import read_feed
from mirror.ingest import ingest
from mirror.replay import ReplayedEvent, Selection, SelectionError, replay
from mirror.retention import prune_event_payloads
from mirror.schema import appointments, patients, webhook_events
from mirror.states import EventStatus
from sync import PassOptions, reconcile
from tests.factories import TIMESTAMPS, event, patient
from tests.support.stored_events import (
    events_by_seq,
    fix_the_cause,
    incoming,
    mirror_contents,
    refuse_patient,
    table_contents,
)
from tests.sync.conftest import API_KEY, Upstream


def replayed(engine: Engine, selection: Selection, **options: Any) -> list[ReplayedEvent]:
    seen: list[ReplayedEvent] = []
    replay(engine, selection, on_event=seen.append, **options)
    return seen


def seqs_of(engine: Engine, record_id: str) -> list[int]:
    with engine.connect() as connection:
        query = select(webhook_events.c.seq).where(webhook_events.c.record_id == record_id)
        return sorted(connection.execute(query).scalars())


def test_an_old_event_replayed_after_a_newer_one_does_not_roll_back(engine: Engine) -> None:
    ingest(engine, [incoming(event("patient.created", patient("PAT1", phone="1"), TIMESTAMPS[0]))])
    ingest(engine, [incoming(event("patient.updated", patient("PAT1", phone="2"), TIMESTAMPS[4]))])
    before = mirror_contents(engine)
    old_seq = seqs_of(engine, "PAT1")[0]

    [result] = replayed(engine, Selection(seqs=(old_seq,)))

    assert (result.status, result.effect, result.fields) == ("applied", "stale", ())
    assert mirror_contents(engine) == before
    row = events_by_seq(engine)[old_seq]
    assert (row.status, row.effect, row.attempts) == ("applied", "stale", 2)


def test_failed_events_apply_once_the_cause_is_fixed(engine: Engine) -> None:
    refuse_patient(engine, "POISON")
    receipts = ingest(
        engine,
        [incoming(event("patient.created", patient(i))) for i in ("PAT1", "POISON", "PAT2")],
    )
    assert [r.status for r in receipts] == ["applied", "failed", "applied"]

    # Still refused: it fails again, keeps an error and counts the attempt.
    [again] = replayed(engine, Selection(statuses=("failed",)))
    assert (again.record_id, again.status, again.error) == (
        "POISON",
        "failed",
        again.previous_error,
    )
    assert again.error is not None
    assert again.error.startswith("apply failed: ")
    row = events_by_seq(engine)[again.seq]
    assert (row.status, row.attempts, row.error) == ("failed", 2, again.error)

    fix_the_cause(engine)
    [fixed] = replayed(engine, Selection(statuses=("failed",)))
    assert (fixed.status, fixed.effect, fixed.previous_status) == ("applied", "created", "failed")
    assert "first_name" in fixed.fields
    row = events_by_seq(engine)[fixed.seq]
    assert (row.status, row.effect, row.error, row.attempts) == ("applied", "created", None, 3)
    assert row.applied_at is not None
    with engine.connect() as connection:
        assert connection.execute(
            select(patients.c.first_name).where(patients.c.id == "POISON")
        ).scalar_one()
    assert replayed(engine, Selection(statuses=("failed",))) == []


def test_one_failing_event_does_not_stop_its_batch(engine: Engine) -> None:
    ingest(engine, [incoming(event("patient.created", patient(i))) for i in ("A", "B", "C")])
    with engine.begin() as connection:
        connection.execute(delete(patients))  # the mirror lost them; the log has them
    refuse_patient(engine, "B")

    results = replayed(engine, Selection(everything=True))

    assert [(r.record_id, r.status) for r in results] == [
        ("A", "applied"),
        ("B", "failed"),
        ("C", "applied"),
    ]
    with engine.connect() as connection:
        mirrored = connection.execute(select(patients.c.id).where(patients.c.raw.is_not(None)))
        assert sorted(mirrored.scalars()) == ["A", "C"]


def _failed_history(engine: Engine) -> None:
    """A create and two updates of one patient that all failed, and an unrelated event."""
    refuse_patient(engine, "PAT1")
    for stamp, phone in ((TIMESTAMPS[0], "1"), (TIMESTAMPS[3], "2"), (TIMESTAMPS[4], "3")):
        kind = "patient.created" if phone == "1" else "patient.updated"
        ingest(engine, [incoming(event(kind, patient("PAT1", phone=phone), stamp))])
    ingest(engine, [incoming(event("patient.created", patient("PAT2")))])
    fix_the_cause(engine)


@pytest.mark.parametrize("batch_size", [1, 200])
def test_a_dry_run_writes_nothing_and_foretells_the_real_run(
    engine: Engine, batch_size: int
) -> None:
    _failed_history(engine)
    before = table_contents(engine)

    foretold = replayed(
        engine, Selection(statuses=("failed",)), dry_run=True, batch_size=batch_size
    )

    assert table_contents(engine) == before
    assert [(r.effect, r.fields) for r in foretold] == [
        ("created", ("abha_number", "date_of_birth", "first_name", "gender", "last_name", "phone")),
        ("updated", ("phone",)),
        ("updated", ("phone",)),
    ]
    assert all(r.previous_error and r.previous_error.startswith("apply failed") for r in foretold)
    done = replayed(engine, Selection(statuses=("failed",)), batch_size=batch_size)
    assert done == foretold


def test_pruned_payloads_are_skipped_and_reported(engine: Engine) -> None:
    ingest(engine, [incoming(event("patient.created", patient("PAT1")))])
    prune_event_payloads(engine, timedelta(days=1), now=datetime.now(UTC) + timedelta(days=2))
    before = table_contents(engine)

    [result] = replayed(engine, Selection(everything=True))

    assert (result.status, result.record_id) == ("skipped", "PAT1")
    assert table_contents(engine) == before


def test_unknown_types_stay_ignored_and_replayable(engine: Engine) -> None:
    ingest(engine, [incoming(event("invoice.paid", {"invoice_id": "INV1"}))])
    [result] = replayed(engine, Selection(event_types=("invoice.paid",)))
    assert result.status == "ignored"
    [row] = events_by_seq(engine).values()
    assert (row.status, row.attempts) == ("ignored", 2)
    assert row.body is not None


def test_a_payload_that_no_longer_parses_fails_with_a_reason(engine: Engine) -> None:
    document = event("patient.created", patient("PAT1"))
    item = incoming(document, body=b'{"event": "patient.created", "data": [')
    store_events_pending(engine, item)
    [result] = replayed(engine, Selection(statuses=("pending",)))
    assert (result.status, result.error) == ("failed", "payload: body is not valid JSON")


def store_events_pending(engine: Engine, item: Any) -> None:
    with engine.begin() as connection:
        store_events(connection, [(item, Outcome(EventStatus.PENDING))])


def test_selection_by_each_selector(engine: Engine) -> None:
    day = datetime(2024, 3, 1, tzinfo=UTC)
    refuse_patient(engine, "FAILS")
    ingest(
        engine,
        [
            incoming(event("patient.created", patient("OLD"), event_id="e-old"), received_at=day),
            incoming(
                event("patient.updated", patient("MID"), event_id="e-mid"),
                received_at=day + timedelta(hours=1),
            ),
            incoming(
                event("patient.created", patient("FAILS"), event_id="e-fails"),
                received_at=day + timedelta(hours=2),
            ),
            incoming(
                event("appointment.cancelled", {"appointment_id": "APT1"}, event_id="e-apt"),
                received_at=day + timedelta(hours=3),
            ),
        ],
    )
    seq = {row.record_id: s for s, row in events_by_seq(engine).items()}

    def ids(selection: Selection) -> list[str | None]:
        return [r.record_id for r in replayed(engine, selection, dry_run=True)]

    assert ids(Selection(since=day + timedelta(hours=1))) == ["MID", "FAILS", "APT1"]
    assert ids(Selection(until=day + timedelta(hours=1))) == ["OLD"]
    # A time in another zone is the same instant.
    ist = datetime.fromisoformat("2024-03-01T06:30:00+05:30")
    assert ids(Selection(since=ist, until=ist + timedelta(hours=2))) == ["MID", "FAILS"]
    assert ids(Selection(event_types=("patient.updated", "appointment.cancelled"))) == [
        "MID",
        "APT1",
    ]
    assert ids(Selection(statuses=("failed",))) == ["FAILS"]
    assert ids(Selection(source="webhook", event_types=("patient.created",))) == ["OLD", "FAILS"]
    assert ids(Selection(source="reconcile")) == []
    assert ids(Selection(seqs=(seq["MID"],), event_ids=("e-apt",))) == ["MID", "APT1"]
    assert ids(Selection(event_ids=("e-old",), statuses=("failed",))) == []
    assert ids(Selection(everything=True)) == ["OLD", "MID", "FAILS", "APT1"]


def test_a_selection_must_say_what_to_replay(engine: Engine) -> None:
    with pytest.raises(SelectionError, match="--all"):
        replay(engine, Selection())
    with pytest.raises(SelectionError, match="leave out the selectors"):
        replay(engine, Selection(everything=True, statuses=("failed",)))
    with pytest.raises(SelectionError, match="unknown status"):
        replay(engine, Selection(statuses=("broken",)))


def test_reconcile_events_replay_to_the_same_mirror(engine: Engine) -> None:
    upstream = Upstream(
        FakeHealthDock(
            seed=5, patients=40, appointments_per_patient=1.0, api_key=API_KEY, rate_limit=None
        )
    )
    options = PassOptions(mass_delete_share=0.5)

    def passes() -> None:
        async def go() -> None:
            async with upstream.client() as client:
                for resource in Resource:
                    await reconcile(engine, client, resource, options)

        asyncio.run(go())

    passes()
    upstream.update_any_patient()
    upstream.delete_any_patient()
    passes()  # an update and a delete the webhooks "missed"

    def mirror_without_pass_marks() -> dict[str, list[dict[str, Any]]]:
        skip = ("mirrored_at",)
        return {
            name: [{k: v for k, v in row.items() if k not in skip} for row in rows]
            for name, rows in mirror_contents(engine).items()
        }

    expected = mirror_without_pass_marks()
    assert any(row["deleted_at"] for row in expected["patients"])
    with engine.begin() as connection:
        for table in (patients, appointments):
            connection.execute(delete(table))

    results = replayed(engine, Selection(source="reconcile"), batch_size=50)

    assert {r.status for r in results} == {"applied"}
    assert mirror_without_pass_marks() == expected


_PHONES = ["1", "2", "3"]


@st.composite
def event_streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    documents = []
    for number in range(draw(st.integers(1, 8))):
        record_id = draw(st.sampled_from(["PAT1", "PAT2"]))
        event_type = draw(
            st.sampled_from(["patient.created", "patient.updated", "patient.deleted"])
        )
        data = (
            {"patient_id": record_id}
            if event_type.endswith("deleted")
            else patient(record_id, phone=draw(st.sampled_from(_PHONES)))
        )
        documents.append(event(event_type, data, draw(st.sampled_from(TIMESTAMPS)), f"e{number}"))
    return documents


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stream=event_streams(), data=st.data())
def test_replaying_any_events_in_any_order_never_changes_a_converged_mirror(
    engine: Engine, stream: list[dict[str, Any]], data: st.DataObject
) -> None:
    with engine.begin() as connection:
        for table in (patients, appointments, webhook_events):
            connection.execute(delete(table))
    for document in stream:
        ingest(engine, [incoming(document)])
    converged = mirror_contents(engine)
    stored = sorted(events_by_seq(engine))

    one_by_one = data.draw(st.lists(st.sampled_from(stored), max_size=12))
    for seq in one_by_one:
        replay(engine, Selection(seqs=(seq,)))
    together = data.draw(st.lists(st.sampled_from(stored), unique=True))
    if together:
        replay(engine, Selection(seqs=tuple(together)), batch_size=data.draw(st.integers(1, 4)))

    assert mirror_contents(engine) == converged


def _feed(engine: Engine) -> list[Any]:
    """Every stored event, as the change feed serves them. On PostgreSQL another test's open
    transaction can hold the feed back a moment: waited for, with a deadline."""
    stored = read_transaction(
        engine, lambda c: c.execute(select(func.count()).select_from(webhook_events)).scalar()
    )
    deadline = time.monotonic() + 30
    while len(events := read_feed(engine, limit=1000).events) < stored:
        assert time.monotonic() < deadline, f"the feed gave {len(events)} of {stored}"
        time.sleep(0.05)
    return list(events)


def test_a_replay_that_changes_the_mirror_is_in_the_change_feed(engine: Engine) -> None:
    refuse_patient(engine, "POISON")
    ingest(engine, [incoming(event("patient.created", patient("POISON")))])
    assert [e.source for e in _feed(engine)] == ["webhook"]  # stored failed, nothing changed

    fix_the_cause(engine)
    [fixed] = replayed(engine, Selection(statuses=("failed",)))
    assert fixed.effect == "created"
    fed = _feed(engine)
    assert [(e.source, e.record_id, e.status, e.effect) for e in fed] == [
        ("webhook", "POISON", "applied", "created"),
        ("replay", "POISON", "applied", "created"),
    ]
    assert fed[1].payload["data"]["patient_id"] == "POISON"  # the replayed body

    # A replay that changes nothing (stale) feeds nothing.
    [again] = replayed(engine, Selection(seqs=(fixed.seq,)))
    assert again.effect == "stale"
    assert len(_feed(engine)) == 2
