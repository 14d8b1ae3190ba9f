"""The queries README.md gives analysts ("Queries analysts run"), run exactly as written on SQLite
and PostgreSQL, against a mirror the service's own writers filled."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from mirror.ingest import ingest
from tests.factories import appointment, event, patient
from tests.support.stored_events import incoming

README = Path(__file__).resolve().parents[1] / "README.md"
LATER = "2026-06-01T00:00:00Z"  # a version after every creation below


def readme_queries() -> dict[str, str]:
    """Each ``sql`` block of the section, by its first line: a comment that names it."""
    section = README.read_text().split("\n### Queries analysts run\n", 1)[1]
    section = re.split(r"\n##+ ", section, maxsplit=1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, flags=re.DOTALL)
    return {block.splitlines()[0].removeprefix("-- "): block for block in blocks}


def query(name: str, dialect: str | None = None) -> str:
    """The README's query whose comment starts with ``name`` (for ``dialect``, if it has
    variants)."""
    [found] = [
        sql
        for title, sql in readme_queries().items()
        if title.startswith(name) and (dialect is None or f"({dialect})" in title)
    ]
    return found


def run(engine: Engine, sql: str) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        # Dates come back as date on PostgreSQL, as the text stored on SQLite: compare as text.
        return [
            tuple(value if isinstance(value, int | None) else str(value) for value in row)
            for row in connection.execute(text(sql))
        ]


@pytest.fixture
def seeded(engine: Engine) -> Engine:
    """Appointments and patients whose local day (Asia/Kolkata) is not their UTC day, some
    deleted upstream, as webhooks bring them."""
    bookings = {
        # id: (doctor, date_time, status)
        "A1": ("DOC01", "2026-03-05T20:00:00Z", "scheduled"),  # the 6th in Kolkata
        "A2": ("DOC01", "2026-03-06T04:00:00Z", "completed"),
        "A3": ("DOC01", "2026-03-06T10:00:00Z", "cancelled"),
        "A4": ("DOC02", "2026-03-05T10:00:00Z", "confirmed"),
        "A5": ("DOC02", "2026-03-31T19:00:00Z", "scheduled"),  # 1 April in Kolkata
        "A6": ("DOC02", "2026-02-28T19:00:00Z", "completed"),  # 1 March in Kolkata
        "A7": ("DOC01", "2999-01-01T10:00:00Z", "scheduled"),  # not yet
        "A8": ("DOC01", "2026-03-06T05:00:00Z", "scheduled"),  # deleted upstream
    }
    registrations = {
        "PAT1": "2026-03-01T20:00:00Z",  # Sunday in UTC, Monday 2 March in Kolkata
        "PAT2": "2026-03-04T10:00:00Z",
        "PAT3": "2026-03-08T19:00:00Z",  # Monday 9 March in Kolkata
        "PAT4": "2026-03-10T00:00:00Z",  # deleted upstream
        "PAT5": None,  # HealthDock did not say
    }
    ingest(
        engine,
        [
            incoming(event("appointment.created", appointment(
                record_id, doctor_id=doctor, date_time=moment, status=status)))
            for record_id, (doctor, moment, status) in bookings.items()
        ]
        + [
            incoming(event("patient.created", patient(record_id, created_at=created)))
            for record_id, created in registrations.items()
        ],
    )  # fmt: skip
    ingest(
        engine,
        [
            incoming(event("appointment.deleted", {"appointment_id": "A8"}, LATER)),
            incoming(event("patient.deleted", {"patient_id": "PAT4"}, LATER)),
        ],
    )
    return engine


def test_the_readme_has_the_queries() -> None:
    titles = list(readme_queries())
    assert len(titles) == 4
    assert all(title[0].isupper() for title in titles)


def test_appointments_per_doctor_per_local_day(seeded: Engine) -> None:
    assert run(seeded, query("Appointments per doctor per local day")) == [
        ("DOC01", "2026-03-06", 2),  # A1 (UTC: the 5th) and A2; A3 cancelled, A8 deleted
        ("DOC02", "2026-03-01", 1),  # A6 (UTC: February); A5 is in April there
        ("DOC02", "2026-03-05", 1),
    ]


def test_no_shows(seeded: Engine) -> None:
    rows = run(seeded, query("No-shows"))
    assert [(row[0], row[2], row[4], row[5]) for row in rows] == [
        ("A4", "DOC02", "2026-03-05", "confirmed"),
        ("A1", "DOC01", "2026-03-06", "scheduled"),
        ("A5", "DOC02", "2026-04-01", "scheduled"),
    ]


def test_new_patients_per_week(seeded: Engine) -> None:
    dialect = "PostgreSQL" if seeded.dialect.name == "postgresql" else "SQLite"
    assert run(seeded, query("New patients per week", dialect)) == [
        ("2026-03-02", 2),  # PAT1 and PAT2: the week from Monday 2 March
        ("2026-03-09", 1),  # PAT3; PAT4 deleted, PAT5 undated
    ]
