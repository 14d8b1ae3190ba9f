"""HealthDock's records now: the generated population plus every change made since.

Only changes are kept (an overlay by index, and a sorted list of deleted indices), so a
million-record store costs the population's bytes and not much more. Lists are in id order,
like the real API's pages: deleting a record moves every later record one place back, so a
client paging by number while records are deleted skips some. That is the page drift a
client has to survive.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from itertools import compress
from typing import Generic, TypeVar

import msgspec

from fake_healthdock.clock import Clock, format_millis, ist_date, parse_millis
from fake_healthdock.population import IdFormat, Population
from fake_healthdock.records import Appointment, Patient, Record
from fake_healthdock.validation import InvalidField

R = TypeVar("R", Patient, Appointment)

_STATUS_EVENTS = {"confirmed", "cancelled", "completed"}
_CACHED_SELECTIONS = 8


class NotFound(LookupError):
    """No live record has that id."""


@dataclass(frozen=True)
class Change:
    """One mutation, as a webhook reports it: ``timestamp`` is the record's new
    ``updated_at``, or the moment of deletion (``record`` is then the last state)."""

    event: str
    timestamp: str
    record: Record


@dataclass(frozen=True)
class Listing(Generic[R]):
    records: list[R]
    page: int
    total_count: int
    total_pages: int


class Table(Generic[R]):
    """One resource's records by 1-based index: generated ones unless changed."""

    def __init__(self, ids: IdFormat, generated: int, generate: Callable[[int], R]) -> None:
        self.ids = ids
        self.generated = generated
        self._generate: Callable[[int], R] = generate
        self._changed: dict[int, R | None] = {}
        self._gone: list[int] = []  # sorted: deleted indices
        self._last = generated  # the highest index ever issued
        self._selections: OrderedDict[Hashable, array[int]] = OrderedDict()

    def get(self, index: int) -> R | None:
        if not 1 <= index <= self._last:
            return None
        if index in self._changed:
            return self._changed[index]
        return self._generate(index)

    def find(self, record_id: str) -> tuple[int, R] | None:
        index = self.ids.parse(record_id)
        record = None if index is None else self.get(index)
        return None if index is None or record is None else (index, record)

    def count(self) -> int:
        return self._last - len(self._gone)

    def nth(self, ordinal: int) -> int:
        """Index of the live record at 0-based position ``ordinal`` in id order."""
        # The smallest index with ordinal + 1 live indices at or below it.
        low, high = ordinal + 1, ordinal + 1 + len(self._gone)
        while low < high:
            middle = (low + high) // 2
            if middle - bisect_right(self._gone, middle) >= ordinal + 1:
                high = middle
            else:
                low = middle + 1
        return low

    def slice(self, offset: int, limit: int) -> list[R]:
        """Live records at positions ``offset`` to ``offset + limit`` in id order."""
        if offset >= self.count():
            return []
        records: list[R] = []
        index = self.nth(offset)
        gone = bisect_left(self._gone, index)
        while len(records) < limit and index <= self._last:
            if gone < len(self._gone) and self._gone[gone] == index:
                gone += 1
            else:
                record = self.get(index)
                assert record is not None
                records.append(record)
            index += 1
        return records

    def indices(self) -> Iterator[int]:
        """Live indices in order; safe to use while records change (a live cursor)."""
        index = 0
        while True:
            index += 1
            if index > self._last:
                return
            if index not in self._changed or self._changed[index] is not None:
                yield index

    def select(
        self, key: Hashable, generated_mask: Callable[[], bytes], keep: Callable[[R], bool]
    ) -> Sequence[int]:
        """Live indices passing a filter, in order: ``generated_mask`` answers it for unchanged
        generated records in bulk, ``keep`` for each changed or added one. Cached until the
        next change."""
        cached = self._selections.get(key)
        if cached is not None:
            self._selections.move_to_end(key)
            return cached
        mask = bytearray(generated_mask())
        added: list[int] = []
        for index, record in self._changed.items():
            matched = record is not None and keep(record)
            if index <= self.generated:
                mask[index - 1] = matched
            elif matched:
                added.append(index)
        selected = array("I", compress(range(1, self.generated + 1), mask))
        selected.extend(sorted(added))
        self._selections[key] = selected
        if len(self._selections) > _CACHED_SELECTIONS:
            self._selections.popitem(last=False)
        return selected

    def put(self, index: int, record: R) -> None:
        self._changed[index] = record
        self._selections.clear()

    def issue(self) -> int:
        self._last += 1
        return self._last

    def remove(self, index: int) -> None:
        self._changed[index] = None
        insort(self._gone, index)
        self._selections.clear()


class Store:
    """Reads and writes of both resources, safe to call from several threads."""

    def __init__(self, population: Population, clock: Clock) -> None:
        self.population = population
        self.patients = Table(population.patient_ids, population.patient_count, population.patient)
        self.appointments = Table(
            population.appointment_ids, population.appointment_count, population.appointment
        )
        self._clock = clock
        self._lock = threading.RLock()

    def today(self) -> date:
        return ist_date(self._clock())

    def patient(self, patient_id: str) -> Patient | None:
        with self._lock:
            found = self.patients.find(patient_id)
        return None if found is None else found[1]

    def appointment(self, appointment_id: str) -> Appointment | None:
        with self._lock:
            found = self.appointments.find(appointment_id)
        return None if found is None else found[1]

    def list_patients(self, *, page: int, limit: int, search: str | None) -> Listing[Patient]:
        with self._lock:
            table = self.patients
            if not search:
                return _listing(table.count(), page, limit, lambda o, n: table.slice(o, n))
            found = table.find(search)
            if found is not None or table.ids.parse(search) is not None:
                records = [] if found is None else [found[1]]
                return _listing(len(records), page, limit, lambda o, n: records[o : o + n])
            needle = search.lower()
            selected = table.select(
                ("name", needle),
                lambda: self.population.patients_named(needle),
                lambda p: needle in p.first_name.lower() or needle in p.last_name.lower(),
            )
            return _listing(len(selected), page, limit, _fetch(table, selected))

    def list_appointments(
        self,
        *,
        page: int,
        limit: int,
        day: date | None,
        doctor_id: str | None,
        status: str | None,
    ) -> Listing[Appointment]:
        # No ``search``: the API reference documents it for patients only.
        with self._lock:
            table = self.appointments
            if day is None and doctor_id is None and status is None:
                return _listing(table.count(), page, limit, lambda o, n: table.slice(o, n))
            doctor = None if doctor_id is None else self.population.doctor_number(doctor_id)
            selected = table.select(
                ("filter", day, doctor_id, status),
                lambda: self._generated_appointments(day, doctor_id, doctor, status),
                lambda a: _passes(a, day, doctor_id, status),
            )
            return _listing(len(selected), page, limit, _fetch(table, selected))

    def _generated_appointments(
        self, day: date | None, doctor_id: str | None, doctor: int | None, status: str | None
    ) -> bytes:
        if doctor_id is not None and doctor is None:
            return bytes(self.appointments.generated)  # not a generated doctor's id
        return self.population.appointments_matching(day=day, doctor=doctor, status=status)

    def iter_patients(self) -> Iterator[Patient]:
        return _iterate(self.patients, self._lock)

    def iter_appointments(self) -> Iterator[Appointment]:
        return _iterate(self.appointments, self._lock)

    def create_patient(self, fields: Mapping[str, object]) -> Change:
        with self._lock:
            index = self.patients.issue()
            stamp = self._stamp(None)
            record = msgspec.convert(
                {**fields, "id": self.patients.ids.format(index)}
                | {"created_at": stamp, "updated_at": stamp},
                Patient,
            )
            self.patients.put(index, record)
            return Change("patient.created", stamp, record)

    def update_patient(self, patient_id: str, fields: Mapping[str, object]) -> Change:
        with self._lock:
            index, old = self._existing(self.patients, patient_id)
            stamp = self._stamp(old.updated_at)
            record = msgspec.structs.replace(old, **fields, updated_at=stamp)
            self.patients.put(index, record)
            return Change("patient.updated", stamp, record)

    def delete_patient(self, patient_id: str) -> Change:
        with self._lock:
            index, old = self._existing(self.patients, patient_id)
            self.patients.remove(index)
            return Change("patient.deleted", self._stamp(old.updated_at), old)

    def create_appointment(self, fields: Mapping[str, object]) -> Change:
        with self._lock:
            self._check_patient(fields)
            index = self.appointments.issue()
            stamp = self._stamp(None)
            record = msgspec.convert(
                {**fields, "id": self.appointments.ids.format(index)}
                | {"created_at": stamp, "updated_at": stamp},
                Appointment,
            )
            self.appointments.put(index, record)
            return Change("appointment.created", stamp, record)

    def update_appointment(self, appointment_id: str, fields: Mapping[str, object]) -> Change:
        with self._lock:
            index, old = self._existing(self.appointments, appointment_id)
            self._check_patient(fields)
            stamp = self._stamp(old.updated_at)
            record = msgspec.structs.replace(old, **fields, updated_at=stamp)
            self.appointments.put(index, record)
            changed = {name for name, value in fields.items() if getattr(old, name) != value}
            event = "appointment.updated"
            if changed == {"status"} and record.status in _STATUS_EVENTS:
                event = f"appointment.{record.status}"
            return Change(event, stamp, record)

    def delete_appointment(self, appointment_id: str) -> Change:
        with self._lock:
            index, old = self._existing(self.appointments, appointment_id)
            self.appointments.remove(index)
            return Change("appointment.deleted", self._stamp(old.updated_at), old)

    def _existing(self, table: Table[R], record_id: str) -> tuple[int, R]:
        found = table.find(record_id)
        if found is None:
            raise NotFound(record_id)
        return found

    def _check_patient(self, fields: Mapping[str, object]) -> None:
        patient_id = fields.get("patient_id")
        if patient_id is not None and self.patients.find(str(patient_id)) is None:
            raise InvalidField("patient_id", "No such patient")

    def _stamp(self, after: str | None) -> str:
        """Now, as a timestamp, but always later than ``after``: a record's versions must
        increase even when the clock stands still or two writes share a millisecond."""
        millis = int(self._clock() * 1000)
        if after is not None:
            millis = max(millis, parse_millis(after) + 1)
        return format_millis(millis)


def _listing(total: int, page: int, limit: int, fetch: Callable[[int, int], list[R]]) -> Listing[R]:
    return Listing(fetch((page - 1) * limit, limit), page, total, -(-total // limit))


def _fetch(table: Table[R], selected: Sequence[int]) -> Callable[[int, int], list[R]]:
    def fetch(offset: int, limit: int) -> list[R]:
        records = [table.get(index) for index in selected[offset : offset + limit]]
        return [record for record in records if record is not None]

    return fetch


def _passes(
    appointment: Appointment, day: date | None, doctor_id: str | None, status: str | None
) -> bool:
    # Stored date-times are normalized to IST, so the first ten characters are the local day.
    return (
        (day is None or appointment.date_time[:10] == day.isoformat())
        and (doctor_id is None or appointment.doctor_id == doctor_id)
        and (status is None or appointment.status == status)
    )


def _iterate(table: Table[R], lock: threading.RLock) -> Iterator[R]:
    for index in table.indices():
        with lock:
            record = table.get(index)
        if record is not None:
            yield record
