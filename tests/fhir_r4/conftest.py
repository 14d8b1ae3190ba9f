"""A small mirror seeded through the service's own writer, and the receiver serving it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import Engine

from mirror import Action, Resource, apply_writes, record_write, write_transaction
from receiver import create_app
from tests.conftest import make_settings

TOKEN = "fhir-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

PATIENTS: list[dict[str, Any]] = [
    {"id": "PAT001", "first_name": "Asha", "last_name": "Sharma", "date_of_birth": "1990-01-15",
     "gender": "F", "phone": "+919800000001", "abha_number": "12345678901234",
     "created_at": "2025-01-01T00:00:00Z", "updated_at": "2026-01-10T10:00:00Z"},
    {"id": "PAT002", "first_name": "Ravi", "last_name": "Sharma", "date_of_birth": "1985-06-30",
     "gender": "M", "phone": "+919800000002", "created_at": "2025-01-01T00:00:00Z",
     "updated_at": "2026-02-01T00:00:00.250Z"},
    {"id": "PAT003", "first_name": "Meera", "last_name": "Shah", "date_of_birth": "1990-12-31",
     "gender": "F", "abha_number": "98-7654-3210-9876", "updated_at": "2026-02-15T12:00:00Z"},
    {"id": "PAT004", "first_name": "Kiran", "last_name": "Iyer", "date_of_birth": "2000-02-29",
     "gender": "Other", "updated_at": "2026-03-01T00:00:00Z", "loyalty_tier": "gold"},
    {"id": "PAT005", "first_name": "Gone", "last_name": "Sharma", "date_of_birth": "1990-05-05",
     "gender": "F", "updated_at": "2026-01-01T00:00:00Z"},
    # Not a FHIR id: mirrored, but not served as FHIR.
    {"id": "PAT_6", "first_name": "Underscore", "last_name": "Sharma", "gender": "M"},
]  # fmt: skip
DELETED_PATIENTS = ["PAT005"]

APPOINTMENTS: list[dict[str, Any]] = [
    # 20:00 UTC on the 5th is 01:30 on the 6th in Asia/Kolkata.
    {"id": "APT001", "patient_id": "PAT001", "doctor_id": "DOC01",
     "date_time": "2026-03-05T20:00:00Z", "duration": 30, "type": "consultation",
     "status": "scheduled", "updated_at": "2026-03-01T00:00:00Z"},
    {"id": "APT002", "patient_id": "PAT001", "doctor_id": "DOC02",
     "date_time": "2026-03-05T04:00:00+05:30", "duration": 45, "type": "procedure",
     "status": "completed", "updated_at": "2026-03-05T06:00:00Z"},
    {"id": "APT003", "patient_id": "PAT002", "doctor_id": "DOC01",
     "date_time": "2026-03-05T10:00:00+05:30", "type": "consultation", "status": "cancelled",
     "updated_at": "2026-03-02T00:00:00Z"},
    {"id": "APT004", "patient_id": "PAT003", "doctor_id": "DOC01",
     "date_time": "2026-04-01T09:00:00+05:30", "duration": 20, "type": "follow-up",
     "status": "confirmed", "updated_at": "2026-03-20T00:00:00Z"},
    {"id": "APT005", "patient_id": "PAT002", "doctor_id": "DOC02",
     "date_time": "2026-03-05T11:00:00+05:30", "status": "scheduled"},
    {"id": "APT006", "patient_id": "PAT004", "doctor_id": "DOC03",
     "date_time": "2026-05-01T09:00:00+05:30", "status": "no-show-pending"},
]  # fmt: skip
DELETED_APPOINTMENTS = ["APT005"]


def seed(
    engine: Engine,
    patients: list[dict[str, Any]],
    appointments: list[dict[str, Any]],
    deleted: dict[Resource, list[str]] | None = None,
    timestamp: str = "2026-03-10T00:00:00Z",
) -> None:
    """Write records as a reconcile pass would (as of ``timestamp``), then tombstone
    ``deleted`` a day later."""
    writes = [record_write(Resource.PATIENT, Action.CREATE, timestamp, record)
              for record in patients]  # fmt: skip
    writes += [record_write(Resource.APPOINTMENT, Action.CREATE, timestamp, record)
               for record in appointments]  # fmt: skip
    for resource, ids in (deleted or {}).items():
        writes += [record_write(resource, Action.DELETE, "2026-03-11T00:00:00Z", {"id": record_id})
                   for record_id in ids]  # fmt: skip
    write_transaction(engine, lambda connection: apply_writes(connection, writes))


@pytest.fixture
def seeded(engine: Engine) -> Engine:
    deleted = {Resource.PATIENT: DELETED_PATIENTS, Resource.APPOINTMENT: DELETED_APPOINTMENTS}
    seed(engine, PATIENTS, APPOINTMENTS, deleted)
    return engine


@pytest.fixture
def fhir(database_url: str, seeded: Engine) -> Iterator[TestClient[Litestar]]:
    with TestClient(create_app(make_settings(database_url, admin_token=TOKEN))) as client:
        yield client
