"""Random, realistic changes: what a hospital's staff do to HealthDock's records all day."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from fake_healthdock.names import GIVEN_NAMES, SURNAMES
from fake_healthdock.records import Appointment, Patient
from fake_healthdock.store import Change, Store, Table

R = TypeVar("R", Patient, Appointment)

# Relative frequencies of each kind of change.
_KINDS = {
    "patient.created": 8,
    "patient.updated": 14,
    "patient.deleted": 2,
    "appointment.created": 20,
    "appointment.confirmed": 16,
    "appointment.completed": 14,
    "appointment.cancelled": 8,
    "appointment.updated": 12,
    "appointment.deleted": 4,
}
_OPEN = ("scheduled", "confirmed")
_TRIES = 8


class Mutator:
    """Makes random changes through the store, from its own seeded generator."""

    def __init__(self, store: Store, seed: int) -> None:
        self._store = store
        self._rng = random.Random(f"healthdock:{seed}:mutations")  # noqa: S311 -- reproducible

    def random_change(self) -> Change | None:
        """One change of a random kind; None when there is nothing to change."""
        kind = self._rng.choices(list(_KINDS), weights=list(_KINDS.values()))[0]
        resource, action = kind.split(".")
        if resource == "patient":
            return self._patient_change(action)
        return self._appointment_change(action)

    def drift(self, resource: str) -> Change | None:
        """Insert or delete one record of ``resource`` ("patients" or "appointments")."""
        insert = self._rng.random() < 0.5
        if resource == "patients":
            return self._patient_change("created" if insert else "deleted")
        return self._appointment_change("created" if insert else "deleted")

    def _patient_change(self, action: str) -> Change | None:
        if action == "created":
            return self._store.create_patient(self._new_patient())
        patient = self._pick(self._store.patients, lambda _: True)
        if patient is None:
            return None
        if action == "deleted":
            return self._store.delete_patient(patient.id)
        return self._store.update_patient(patient.id, self._patient_edit(patient))

    def _appointment_change(self, action: str) -> Change | None:
        store = self._store
        if action == "created":
            patient = self._pick(store.patients, lambda _: True)
            return None if patient is None else store.create_appointment(self._booking(patient))
        wanted: Callable[[Appointment], bool] = lambda _: True  # noqa: E731
        if action in ("confirmed", "completed", "cancelled"):
            wanted = lambda a: a.status in _OPEN and a.status != action  # noqa: E731
        appointment = self._pick(store.appointments, wanted)
        if appointment is None:
            return None
        if action == "deleted":
            return store.delete_appointment(appointment.id)
        if action == "updated":
            return store.update_appointment(appointment.id, self._reschedule(appointment))
        return store.update_appointment(appointment.id, {"status": action})

    def _pick(self, table: Table[R], wanted: Callable[[R], bool]) -> R | None:
        """A random live record, preferring one that is ``wanted``."""
        record: R | None = None
        for _ in range(_TRIES):
            count = table.count()
            if not count:
                return None
            record = table.get(table.nth(self._rng.randrange(count)))
            if record is not None and wanted(record):
                return record
        return record

    def _new_patient(self) -> dict[str, object]:
        rng = self._rng
        given = rng.randrange(256)
        born = self._store.today() - timedelta(days=rng.randrange(1, 95 * 365))
        return {
            "first_name": GIVEN_NAMES[given],
            "last_name": SURNAMES[rng.randrange(256)],
            "date_of_birth": born.isoformat(),
            "gender": "M" if given < 128 else "F",
            "phone": self._phone(),
            "abha_number": self._abha() if rng.random() < 0.6 else None,
        }

    def _patient_edit(self, patient: Patient) -> dict[str, object]:
        roll = self._rng.random()
        if roll < 0.4:
            return {"phone": self._phone()}
        if roll < 0.7 and patient.abha_number is None:
            return {"abha_number": self._abha()}
        if roll < 0.85 and patient.gender == "F":
            return {"last_name": SURNAMES[self._rng.randrange(256)]}
        return {"phone": self._phone()}

    def _booking(self, patient: Patient) -> dict[str, object]:
        rng = self._rng
        population = self._store.population
        kind = rng.choices(("consultation", "follow-up", "procedure"), weights=(55, 30, 15))[0]
        durations = {"consultation": (15, 30), "follow-up": (15, 20), "procedure": (60, 90)}
        return {
            "patient_id": patient.id,
            "doctor_id": population.doctor_id(1 + rng.randrange(population.doctor_count)),
            "date_time": self._slot(days_ahead=rng.randrange(0, 29)),
            "duration": rng.choice(durations[kind]),
            "type": kind,
            "status": "scheduled",
        }

    def _reschedule(self, appointment: Appointment) -> dict[str, object]:
        return {"date_time": self._slot(days_ahead=self._rng.randrange(1, 15))}

    def _slot(self, *, days_ahead: int) -> str:
        day = self._store.today() + timedelta(days=days_ahead)
        minutes = 9 * 60 + 15 * self._rng.randrange(36)
        return f"{day.isoformat()}T{minutes // 60:02d}:{minutes % 60:02d}:00+05:30"

    def _phone(self) -> str:
        return f"+91{self._rng.randrange(6, 10)}{self._rng.randrange(10**9):09d}"

    def _abha(self) -> str:
        return str(10**13 + self._rng.randrange(9 * 10**13))


async def churn(mutate: Callable[[int], object], per_second: float) -> None:
    """Call ``mutate(1)`` ``per_second`` times a second, until cancelled."""
    interval = 1.0 / per_second
    due = time.monotonic()
    while True:
        due += interval
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        mutate(1)
