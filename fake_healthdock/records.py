"""HealthDock's records as the API returns them, and as webhooks carry them."""

from __future__ import annotations

from typing import Any

import msgspec

GENDERS = ("M", "F", "Other")
APPOINTMENT_TYPES = ("consultation", "follow-up", "procedure")
APPOINTMENT_STATUSES = ("scheduled", "confirmed", "completed", "cancelled")


class Patient(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: str
    first_name: str
    last_name: str
    date_of_birth: str
    gender: str
    phone: str
    # Absent from the JSON when the patient has no ABHA number.
    abha_number: str | None = None
    created_at: str
    updated_at: str


class Appointment(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    patient_id: str
    doctor_id: str
    date_time: str
    duration: int
    type: str
    status: str
    created_at: str
    updated_at: str


Record = Patient | Appointment


def webhook_data(record: Record) -> dict[str, Any]:
    """The record's fields as a webhook's ``data``: its id under ``patient_id`` or
    ``appointment_id``, first, the way HealthDock's examples show it."""
    fields: dict[str, Any] = msgspec.to_builtins(record)
    key = "patient_id" if isinstance(record, Patient) else "appointment_id"
    data = {key: fields.pop("id")}
    data.update(fields)
    return data
