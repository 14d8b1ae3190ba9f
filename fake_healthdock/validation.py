"""What HealthDock accepts in a POST or PUT body, normalized to how it stores it.

Errors name the first offending field, as the reference's error example does
(``details: {"field": ..., "issue": ...}``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime

from fake_healthdock.clock import IST
from fake_healthdock.records import APPOINTMENT_STATUSES, APPOINTMENT_TYPES, GENDERS

# Sent back by clients that PUT a whole record; the server owns them, so they are ignored.
_READ_ONLY = frozenset({"id", "created_at", "updated_at"})
_PATIENT_REQUIRED = ("first_name", "last_name", "date_of_birth", "gender", "phone")
_APPOINTMENT_REQUIRED = ("patient_id", "doctor_id", "date_time")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_E164 = re.compile(r"\+[1-9]\d{7,14}")
_INDIAN_MOBILE = re.compile(r"[6-9]\d{9}")
_ABHA = re.compile(r"\d{14}")
_MAX_TEXT = 100


class InvalidField(Exception):
    """A body field HealthDock would reject."""

    def __init__(self, field: str, issue: str) -> None:
        super().__init__(f"{field}: {issue}")
        self.field = field
        self.issue = issue


def patient_fields(body: Mapping[str, object], *, partial: bool, today: date) -> dict[str, object]:
    """Normalized patient fields from ``body``; every required one unless ``partial`` (PUT)."""
    fields: dict[str, object] = {}
    for name, value in body.items():
        if name in _READ_ONLY:
            continue
        if name in ("first_name", "last_name"):
            fields[name] = _text(name, value)
        elif name == "date_of_birth":
            fields[name] = _birth_date(value, today)
        elif name == "gender":
            fields[name] = _choice(name, value, GENDERS)
        elif name == "phone":
            fields[name] = _phone(value)
        elif name == "abha_number":
            fields[name] = None if value is None else _abha(value)
        else:
            raise InvalidField(name, "Unknown field")
    if not partial:
        _require(fields, _PATIENT_REQUIRED)
    return fields


def appointment_fields(body: Mapping[str, object], *, partial: bool) -> dict[str, object]:
    """Normalized appointment fields from ``body``, with the reference's defaults on create."""
    fields: dict[str, object] = {}
    for name, value in body.items():
        if name in _READ_ONLY:
            continue
        if name in ("patient_id", "doctor_id"):
            fields[name] = _text(name, value)
        elif name == "date_time":
            fields[name] = _date_time(value)
        elif name == "duration":
            fields[name] = _duration(value)
        elif name == "type":
            fields[name] = _choice(name, value, APPOINTMENT_TYPES)
        elif name == "status":
            fields[name] = _choice(name, value, APPOINTMENT_STATUSES)
        else:
            raise InvalidField(name, "Unknown field")
    if not partial:
        _require(fields, _APPOINTMENT_REQUIRED)
        fields.setdefault("duration", 30)
        fields.setdefault("type", "consultation")
        fields.setdefault("status", "scheduled")
    return fields


def list_date(value: str) -> date:
    """The ``date`` filter of ``GET /appointments``."""
    if not _DATE.fullmatch(value):
        raise InvalidField("date", "Invalid date format, expected YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidField("date", "Invalid date") from None


def _require(fields: Mapping[str, object], names: tuple[str, ...]) -> None:
    for name in names:
        if name not in fields:
            raise InvalidField(name, "Required field is missing")


def _text(field: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(field, "Must be a non-empty string")
    if len(value) > _MAX_TEXT:
        raise InvalidField(field, f"Must be at most {_MAX_TEXT} characters")
    return value.strip()


def _choice(field: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidField(field, f"Must be one of {', '.join(allowed)}")
    assert isinstance(value, str)
    return value


def _birth_date(value: object, today: date) -> str:
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise InvalidField("date_of_birth", "Invalid date format")
    try:
        born = date.fromisoformat(value)
    except ValueError:
        raise InvalidField("date_of_birth", "Invalid date format") from None
    if born > today or born.year < 1900:
        raise InvalidField("date_of_birth", "Date is out of range")
    return value


def _phone(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidField("phone", "Must be a string")
    compact = re.sub(r"[\s-]", "", value)
    if _INDIAN_MOBILE.fullmatch(compact):
        return "+91" + compact
    if not _E164.fullmatch(compact):
        raise InvalidField("phone", "Invalid phone number, expected +<country code><number>")
    return compact


def _abha(value: object) -> str:
    compact = value.replace("-", "") if isinstance(value, str) else ""
    if not _ABHA.fullmatch(compact):
        raise InvalidField("abha_number", "Must be 14 digits")
    return compact


def _date_time(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidField("date_time", "Invalid ISO 8601 date-time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidField("date_time", "Invalid ISO 8601 date-time") from None
    # A time without an offset is a hospital's local time.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=IST)
    return moment.astimezone(IST).replace(microsecond=0).isoformat()


def _duration(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 5 <= value <= 480:
        raise InvalidField("duration", "Must be an integer number of minutes, 5 to 480")
    return value
