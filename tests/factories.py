"""Factories for signed HealthDock events, as HealthDock would send them."""

from __future__ import annotations

import itertools
import json
from typing import Any

from receiver.signature import SIGNATURE_HEADER, sign

SECRET = b"test-secret"
_ids = itertools.count(1)

# Values that must never appear in a log line (see tests/receiver/test_logging.py).
PATIENT_NAME = ("Aarav", "Raghunathan")
PATIENT_PHONE = "+919812345678"
PATIENT_DOB = "1987-06-15"
PATIENT_ABHA = "91234567890123"


# Instants that collide on purpose: equal moments in two zones, a sub-second step, ties.
TIMESTAMPS = [
    "2024-01-01T00:00:00Z",
    "2024-01-01T05:30:00+05:30",
    "2024-01-01T00:00:00.5Z",
    "2024-01-01T00:00:01Z",
    "2024-01-02T00:00:00Z",
]


def patient(record_id: str = "PAT000001", **fields: Any) -> dict[str, Any]:
    return {
        "patient_id": record_id,
        "first_name": PATIENT_NAME[0],
        "last_name": PATIENT_NAME[1],
        "date_of_birth": PATIENT_DOB,
        "gender": "M",
        "phone": PATIENT_PHONE,
        "abha_number": PATIENT_ABHA,
        **fields,
    }


def appointment(record_id: str = "APT000001", **fields: Any) -> dict[str, Any]:
    return {
        "appointment_id": record_id,
        "patient_id": "PAT000001",
        "doctor_id": "DOC01",
        "date_time": "2024-02-01T09:30:00+05:30",
        "duration": 45,
        "type": "consultation",
        "status": "scheduled",
        **fields,
    }


def event(
    event_type: str,
    data: dict[str, Any],
    timestamp: str = "2024-01-12T10:30:00Z",
    event_id: str | None = "auto",
) -> dict[str, Any]:
    document: dict[str, Any] = {}
    if event_id is not None:
        document["id"] = f"evt_{next(_ids):06d}" if event_id == "auto" else event_id
    document.update({"event": event_type, "timestamp": timestamp, "data": data})
    return document


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def signed(body: bytes, secret: bytes = SECRET) -> dict[str, str]:
    """Headers HealthDock sends with ``body``."""
    return {SIGNATURE_HEADER: sign(body, secret), "Content-Type": "application/json"}
