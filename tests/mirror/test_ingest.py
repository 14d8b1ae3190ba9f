"""Storing and applying events on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, select

from mirror.eventlog import IncomingEvent, dedup_key
from mirror.events import parse_event
from mirror.ingest import ingest
from mirror.schema import appointments, patients, webhook_events
from mirror.states import EventSource
from tests.factories import TIMESTAMPS, appointment, encode, event, patient
from tests.support.stored_events import refuse_patient


def incoming(document: dict[str, Any]) -> IncomingEvent:
    body = encode(document)
    parsed = parse_event(document)
    return IncomingEvent(
        EventSource.WEBHOOK, dedup_key(parsed.event_id, body), parsed, body, [], datetime.now(UTC)
    )


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive UTC, PostgreSQL an aware datetime in the session's zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def mirror_rows(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """What an analyst sees, minus the one column that is our own wall clock."""
    with engine.connect() as connection:
        return {
            table.name: [
                {k: v for k, v in row._mapping.items() if k != "mirrored_at"}
                for row in connection.execute(select(table).order_by(table.c.id))
            ]
            for table in (patients, appointments)
        }


def test_event_lands_as_typed_columns_and_raw(engine: Engine) -> None:
    document = event("patient.created", patient("PAT1", shoe_size=43))
    [receipt] = ingest(engine, [incoming(document)])
    assert (receipt.status, receipt.effect) == ("applied", "created")
    with engine.connect() as connection:
        row = connection.execute(select(patients)).one()
    assert row.first_name == "Aarav"
    assert row.date_of_birth == date(1987, 6, 15)
    assert row.raw["shoe_size"] == 43  # unknown fields are kept
    assert row.source_version == "2024-01-12T10:30:00.000000000Z"
    assert row.deleted_at is None


def test_appointment_fields_and_default_duration(engine: Engine) -> None:
    data = appointment("APT1")
    del data["duration"]
    ingest(
        engine,
        [
            incoming(event("appointment.created", data, "2024-01-10T00:00:00Z")),
            incoming(
                event("appointment.confirmed", {"appointment_id": "APT2", "patient_id": "PAT1"})
            ),
        ],
    )
    with engine.connect() as connection:
        rows = {r.id: r for r in connection.execute(select(appointments))}
    assert rows["APT1"].duration == 30
    assert as_utc(rows["APT1"].date_time) == datetime(2024, 2, 1, 4, 0, tzinfo=UTC)
    assert rows["APT1"].patient_id == "PAT000001"  # the appointment's key is not its patient_id
    assert rows["APT2"].status == "confirmed"  # implied by the event type


def test_delete_then_older_update_stays_deleted(engine: Engine) -> None:
    ingest(
        engine, [incoming(event("patient.deleted", {"patient_id": "PAT1"}, "2024-01-02T00:00:00Z"))]
    )
    [receipt] = ingest(
        engine, [incoming(event("patient.updated", patient("PAT1"), "2024-01-01T00:00:00Z"))]
    )
    assert receipt.effect == "stale"
    with engine.connect() as connection:
        row = connection.execute(select(patients)).one()
    assert as_utc(row.deleted_at) == datetime(2024, 1, 2, tzinfo=UTC)


def test_redelivery_has_no_second_effect(engine: Engine) -> None:
    first = incoming(event("patient.created", patient("PAT1"), event_id="evt_1"))
    newer_copy = incoming(
        event(
            "patient.updated", patient("PAT1", phone="0"), "2030-01-01T00:00:00Z", event_id="evt_1"
        )
    )
    receipts = ingest(engine, [first, first])
    assert [r.status for r in receipts] == ["applied", "duplicate"]
    # A later redelivery under the same id is acknowledged and changes nothing.
    [again] = ingest(engine, [newer_copy])
    assert again.status == "duplicate"
    with engine.connect() as connection:
        assert connection.execute(select(patients.c.phone)).scalar_one() == "+919812345678"
        assert len(connection.execute(select(webhook_events.c.seq)).all()) == 1


def test_events_without_id_deduplicate_on_their_content(engine: Engine) -> None:
    item = incoming(event("patient.created", patient("PAT1"), event_id=None))
    assert [r.status for r in ingest(engine, [item])] == ["applied"]
    assert [r.status for r in ingest(engine, [item])] == ["duplicate"]


def test_unknown_event_type_is_stored_and_ignored(engine: Engine) -> None:
    [receipt] = ingest(engine, [incoming(event("invoice.paid", {"invoice_id": "INV1"}))])
    assert receipt.status == "ignored"
    with engine.connect() as connection:
        stored = connection.execute(select(webhook_events)).one()
    assert stored.status == "ignored"
    assert stored.event_type == "invoice.paid"
    assert b"INV1" in stored.body


_TIMES = TIMESTAMPS
_TYPES = ["patient.created", "patient.updated", "patient.deleted"]


@st.composite
def event_streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    documents = []
    for number in range(draw(st.integers(1, 10))):
        record_id = draw(st.sampled_from(["PAT1", "PAT2"]))
        event_type = draw(st.sampled_from(_TYPES))
        data = (
            {"patient_id": record_id}
            if event_type.endswith("deleted")
            else patient(record_id, phone=draw(st.sampled_from(["1", "2", "3"])))
        )
        documents.append(event(event_type, data, draw(st.sampled_from(_TIMES)), f"e{number}"))
    return documents


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stream=event_streams(), data=st.data())
def test_any_order_and_duplication_yields_the_mirror_of_in_order_delivery(
    engine: Engine, stream: list[dict[str, Any]], data: st.DataObject
) -> None:
    def reset() -> None:
        with engine.begin() as connection:
            for table in (patients, appointments, webhook_events):
                connection.execute(delete(table))

    reset()
    for document in stream:
        ingest(engine, [incoming(document)])
    expected = mirror_rows(engine)

    reset()
    deliveries = data.draw(st.permutations(stream + data.draw(st.lists(st.sampled_from(stream)))))
    cut = data.draw(st.integers(0, len(deliveries)))  # some in one batch, the rest one by one
    ingest(engine, [incoming(d) for d in deliveries[:cut]])
    for document in deliveries[cut:]:
        ingest(engine, [incoming(document)])
    assert mirror_rows(engine) == expected


def test_values_postgresql_would_refuse_stay_in_raw(engine: Engine) -> None:
    odd = patient("PAT1", first_name="Nul\x00Byte", phone="9" * 40, gender="x" * 17)
    [receipt] = ingest(engine, [incoming(event("patient.created", odd))])
    assert receipt.status == "applied"
    with engine.connect() as connection:
        row = connection.execute(select(patients)).one()
    assert (row.first_name, row.phone, row.gender) == (None, None, None)
    assert row.raw["phone"] == "9" * 40


def test_an_event_that_cannot_be_applied_is_stored_as_failed_and_others_apply(
    engine: Engine,
) -> None:
    refuse_patient(engine, "POISON")  # the database itself refuses it, not a mock
    batch = [
        incoming(event("patient.created", patient(record_id)))
        for record_id in ("PAT1", "POISON", "PAT2")
    ]
    receipts = ingest(engine, batch)
    assert [r.status for r in receipts] == ["applied", "failed", "applied"]
    with engine.connect() as connection:
        stored = {r.record_id: r for r in connection.execute(select(webhook_events))}
        mirrored = connection.execute(select(patients.c.id).where(patients.c.raw.is_not(None)))
        assert sorted(mirrored.scalars()) == ["PAT1", "PAT2"]
    assert stored["POISON"].status == "failed"
    assert stored["POISON"].attempts == 1
    assert "apply failed" in stored["POISON"].error
    assert stored["PAT1"].status == "applied"


def test_concurrent_writers_of_the_same_new_records_converge(engine: Engine) -> None:
    """Writers racing to create the same records (on PostgreSQL, inserts between another
    writer's read and its insert) all succeed and leave the mirror of in-order delivery."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    record_ids = [f"RACE{n}" for n in range(40)]
    stream = [
        event(event_type, data, moment, f"race-{event_type}-{record_id}-{moment}")
        for record_id in record_ids
        for event_type, data, moment in (
            ("patient.created", patient(record_id, phone="1"), _TIMES[0]),
            ("patient.updated", patient(record_id, phone="2"), _TIMES[2]),
            ("patient.deleted", {"patient_id": record_id}, _TIMES[1]),
        )
    ]
    for document in stream:
        ingest(engine, [incoming(document)])
    expected = mirror_rows(engine)
    with engine.begin() as connection:
        for table in (patients, appointments, webhook_events):
            connection.execute(delete(table))

    writers = 6
    shuffled = [random.Random(seed).sample(stream, len(stream)) for seed in range(writers)]
    batches = [
        [incoming(document) for document in order[start : start + 15]]
        for order in shuffled
        for start in range(0, len(order), 15)
    ]
    with ThreadPoolExecutor(writers) as pool:
        receipts = [r for batch in pool.map(lambda b: ingest(engine, b), batches) for r in batch]
    assert {receipt.status for receipt in receipts} <= {"applied", "duplicate"}
    assert mirror_rows(engine) == expected


def test_an_eight_digit_fraction_is_newer_than_a_seven_digit_one(engine: Engine) -> None:
    """The probe's case: .12345678 was truncated to .123456 and lost to an older .1234567."""
    older = incoming(
        event("patient.updated", patient("PAT1", phone="older"), "2024-01-12T10:30:00.1234567Z")
    )
    newer = incoming(
        event("patient.updated", patient("PAT1", phone="newer"), "2024-01-12T10:30:00.12345678Z")
    )
    receipts = ingest(engine, [older]) + ingest(engine, [newer])
    assert [r.effect for r in receipts] == ["created", "updated"]
    with engine.connect() as connection:
        row = connection.execute(select(patients)).one()
    assert row.phone == "newer"
    assert row.source_version == "2024-01-12T10:30:00.123456780Z"


def test_an_integral_number_written_as_a_float_fills_its_integer_column(engine: Engine) -> None:
    # 3.0e1 in the signed bytes denotes 30: JSON has one number type.
    ingest(engine, [incoming(event("appointment.created", appointment("APT1", duration=30.0)))])
    with engine.connect() as connection:
        assert connection.execute(select(appointments.c.duration)).scalar_one() == 30
