"""Mirrored records as FHIR R4 resources (SPEC.md, Interoperability): plain functions from a
row of the mirror to a resource's JSON, inventing nothing the row does not hold.

A value the mirror could not type (it is NULL in its column, kept in ``raw``) is left out of
the resource, as are fields HealthDock sends that we do not know: what FHIR gets is only what
has a meaning there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from mirror import search

# The HealthDock id of a record, as an identifier: the collection it is read from.
PATIENT_ID_SYSTEM = "https://api.healthdock.org/v1/patients"
APPOINTMENT_ID_SYSTEM = "https://api.healthdock.org/v1/appointments"
# ABDM's Health ID (ABHA number) namespace.
ABHA_SYSTEM = "https://healthid.ndhm.gov.in"
_APPOINTMENT_TYPES = "http://terminology.hl7.org/CodeSystem/v2-0276"
_DATA_ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
_DEFAULT_MINUTES = 30  # SPEC.md: an appointment's duration when HealthDock gives none

GENDERS: Mapping[str, str] = {"M": "male", "F": "female", "Other": "other"}
# FHIR's AppointmentStatus for each HealthDock status.
APPOINTMENT_STATUSES: Mapping[str, str] = {
    "scheduled": "booked",
    "confirmed": "booked",
    "completed": "fulfilled",
    "cancelled": "cancelled",
}

# FHIR's id datatype; a HealthDock id outside it cannot be a resource's id or a reference.
FHIR_ID_CHARACTERS = "A-Za-z0-9.-"  # as in a regular expression's brackets
FHIR_ID_LENGTH = 64
_FHIR_ID = re.compile(f"[{FHIR_ID_CHARACTERS}]{{1,{FHIR_ID_LENGTH}}}")


def is_fhir_id(value: str) -> bool:
    return _FHIR_ID.fullmatch(value) is not None


def instant(moment: datetime, zone: ZoneInfo | None = None) -> str:
    """A FHIR ``instant`` (seconds and an offset always; milliseconds when there are any)."""
    moment = moment.astimezone(zone) if zone is not None else moment
    timespec = "milliseconds" if moment.microsecond else "seconds"
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


def _string(value: object) -> str | None:
    """A FHIR ``string``: never empty."""
    return value if isinstance(value, str) and value.strip() else None


def _absent() -> dict[str, Any]:
    """An element FHIR requires and the mirror does not know: data-absent-reason unknown."""
    return {"extension": [{"url": _DATA_ABSENT, "valueCode": "unknown"}]}


def _meta(columns: Mapping[str, Any]) -> dict[str, Any]:
    updated = columns.get("updated_at")
    return {"meta": {"lastUpdated": instant(updated)}} if isinstance(updated, datetime) else {}


def patient_resource(record: search.FoundRecord) -> dict[str, Any]:
    """The FHIR ``Patient`` of a mirrored patient."""
    columns = record.columns
    resource: dict[str, Any] = {"resourceType": "Patient", "id": record.id, **_meta(columns)}
    identifiers = [{"system": PATIENT_ID_SYSTEM, "value": record.id}]
    if abha := _string(columns.get("abha_number")):
        identifiers.append({"system": ABHA_SYSTEM, "value": abha})
    resource["identifier"] = identifiers
    name: dict[str, Any] = {}
    if family := _string(columns.get("last_name")):
        name["family"] = family
    if given := _string(columns.get("first_name")):
        name["given"] = [given]
    if name:
        resource["name"] = [name]
    if phone := _string(columns.get("phone")):
        resource["telecom"] = [{"system": "phone", "value": phone}]
    if gender := GENDERS.get(columns.get("gender") or ""):
        resource["gender"] = gender
    if isinstance(born := columns.get("date_of_birth"), date):
        resource["birthDate"] = born.isoformat()
    return resource


def _reference(kind: str, record_id: object, system: str | None) -> dict[str, Any] | None:
    if not isinstance(record_id, str) or not record_id:
        return None
    if is_fhir_id(record_id):
        return {"reference": f"{kind}/{record_id}"}
    # Not a FHIR id: the record is still named, by its HealthDock identifier.
    if system is None:
        return {"display": f"HealthDock {kind.lower()} {record_id[:64]}"}
    return {"type": kind, "identifier": {"system": system, "value": record_id}}


def appointment_resource(record: search.FoundRecord, zone: ZoneInfo) -> dict[str, Any]:
    """The FHIR ``Appointment`` of a mirrored appointment; its times in ``zone``."""
    columns = record.columns
    resource: dict[str, Any] = {"resourceType": "Appointment", "id": record.id, **_meta(columns)}
    resource["identifier"] = [{"system": APPOINTMENT_ID_SYSTEM, "value": record.id}]
    status = APPOINTMENT_STATUSES.get(columns.get("status") or "")
    if status is not None:
        resource["status"] = status
    else:
        # Required in FHIR, unknown here: said so, rather than a status HealthDock never gave.
        resource["_status"] = _absent()
    if kind := _string(columns.get("type")):
        concept: dict[str, Any] = {"text": kind}
        if kind == "follow-up":
            concept["coding"] = [{"system": _APPOINTMENT_TYPES, "code": "FOLLOWUP"}]
        resource["appointmentType"] = concept
    start = columns.get("date_time")
    duration = columns.get("duration")
    if isinstance(start, datetime):
        # FHIR wants start and end together: HealthDock's default length when it gives none.
        minutes = duration if isinstance(duration, int) else _DEFAULT_MINUTES
        resource["start"] = instant(start, zone)
        resource["end"] = instant(start + timedelta(minutes=max(minutes, 0)), zone)
        if minutes > 0:
            resource["minutesDuration"] = minutes
    else:
        # A booked appointment must have times (FHIR's app-3): unknown ones are said so.
        resource["_start"] = resource["_end"] = _absent()
    participants: list[dict[str, Any]] = []
    for kind_, key, system in (
        ("Patient", "patient_id", PATIENT_ID_SYSTEM),
        ("Practitioner", "doctor_id", None),
    ):
        if (actor := _reference(kind_, columns.get(key), system)) is not None:
            participants.append({"actor": actor, "status": "accepted"})
    if not participants:
        # FHIR needs one participant: say who is not known rather than leave the rule broken.
        participants.append({"type": [_absent()], "status": "needs-action"})
    resource["participant"] = participants
    return resource
