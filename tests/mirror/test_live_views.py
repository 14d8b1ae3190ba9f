"""The views ``live_patients`` and ``live_appointments``: the records not deleted upstream, with
the columns analysts use. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date

from sqlalchemy import Engine, inspect, text

from mirror.ingest import ingest
from tests.factories import appointment, event, patient
from tests.support.stored_events import incoming

PATIENT_COLUMNS = [
    "id", "first_name", "last_name", "date_of_birth", "gender", "phone", "abha_number",
    "created_at", "updated_at", "mirrored_at",
]  # fmt: skip
APPOINTMENT_COLUMNS = [
    "id", "patient_id", "doctor_id", "date_time", "local_date", "duration", "type", "status",
    "created_at", "updated_at", "mirrored_at",
]  # fmt: skip


def ids_in(engine: Engine, view: str) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(text(f"SELECT id FROM {view} ORDER BY id")).scalars())


def test_the_views_have_the_documented_columns(engine: Engine) -> None:
    inspector = inspect(engine)
    assert {"live_patients", "live_appointments"} <= set(inspector.get_view_names())
    assert [c["name"] for c in inspector.get_columns("live_patients")] == PATIENT_COLUMNS
    assert [c["name"] for c in inspector.get_columns("live_appointments")] == APPOINTMENT_COLUMNS


def test_tombstoned_records_are_not_live(engine: Engine) -> None:
    ingest(
        engine,
        [incoming(event("patient.created", patient(i))) for i in ("PAT1", "PAT2", "PAT3")]
        + [
            incoming(event("appointment.created", appointment(i, date_time=moment)))
            for i, moment in (("APT1", "2026-03-05T20:00:00Z"), ("APT2", "2026-03-06T10:00:00Z"))
        ],
    )
    later = "2026-01-01T00:00:00Z"
    ingest(
        engine,
        [
            incoming(event("patient.deleted", {"patient_id": "PAT2"}, later)),
            incoming(event("appointment.deleted", {"appointment_id": "APT2"}, later)),
        ],
    )
    assert ids_in(engine, "live_patients") == ["PAT1", "PAT3"]
    assert ids_in(engine, "live_appointments") == ["APT1"]
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT doctor_id, local_date, status FROM live_appointments")
        ).one()
    # SQLite has no date type: a view hands back the text the table stores.
    assert (row.doctor_id, str(row.local_date), row.status) == (
        "DOC01", str(date(2026, 3, 6)), "scheduled",
    )  # fmt: skip

    # A strictly newer update revives a deleted record: it is live again.
    ingest(engine, [incoming(event("patient.updated", patient("PAT2"), "2026-02-01T00:00:00Z"))])
    assert ids_in(engine, "live_patients") == ["PAT1", "PAT2", "PAT3"]
