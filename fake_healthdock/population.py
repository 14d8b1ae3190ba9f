"""The seeded population: every generated record is a pure function of (seed, size, index).

Each record is a fixed-width row of random bytes, drawn once from ``random.Random(seed)``;
fields are decoded from the row on demand. A million patients and two million appointments
take about 80 MB and no start-up time worth mentioning. Fields that lists filter on (given
name, surname, doctor, day, status) each come from one byte of the row, so a filter over every
record is a handful of C-speed ``bytes.translate`` calls rather than a Python loop.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from datetime import date, timedelta

from fake_healthdock.clock import format_millis, ist_midnight
from fake_healthdock.names import GIVEN_NAMES, SURNAMES
from fake_healthdock.records import Appointment, Patient

# given, surname, other-gender, age, phone, phone lead, ABHA present, ABHA, created,
# updated, created ms, updated ms, pad
_PATIENT_ROW = struct.Struct("<BBBHIBBQIIHHx")
# patient, doctor, day, slot, duration, type, status, booking lead, updated, created ms,
# updated ms, pad
_APPOINTMENT_ROW = struct.Struct("<IBBBBBBIIHHxx")
_GIVEN_AT, _SURNAME_AT = 0, 1
_DOCTOR_AT, _DAY_AT, _STATUS_AT = 4, 5, 9

_DAY = 86_400
_YEAR_DAYS = 365
_CHUNK = 1 << 20
_WEEKS_BACK, _WEEKS_AHEAD = 8, 4
# Outpatient days: Sundays are nearly empty, Saturdays half full.
_WEEKDAY_WEIGHT = (1.0, 1.0, 1.0, 1.0, 1.0, 0.6, 0.15)
_FIRST_SLOT_MINUTES, _SLOT_MINUTES, _SLOTS = 9 * 60, 15, 36


def _table(*shares: tuple[str, int]) -> tuple[str, ...]:
    table = tuple(name for name, count in shares for _ in range(count))
    assert len(table) == 256
    return table


_TYPES = _table(("consultation", 141), ("follow-up", 77), ("procedure", 38))
_DURATIONS = {
    "consultation": (15, 20, 30, 30, 30, 45),
    "follow-up": (15, 15, 20, 30),
    "procedure": (45, 60, 60, 90, 120),
}
_PAST_STATUSES = _table(("completed", 218), ("cancelled", 38))
_UPCOMING_STATUSES = _table(("scheduled", 141), ("confirmed", 90), ("cancelled", 25))


class IdFormat:
    """``PAT000123``: a prefix and a fixed number of digits, so string order is index order.

    The width leaves room for ten times the generated population (at least six digits)."""

    def __init__(self, prefix: str, population: int) -> None:
        self.prefix = prefix
        self.width = max(6, len(str(10 * population)))

    def format(self, index: int) -> str:
        return f"{self.prefix}{index:0{self.width}d}"

    def parse(self, text: str) -> int | None:
        digits = text[len(self.prefix) :]
        if not text.startswith(self.prefix) or len(digits) != self.width or not digits.isdigit():
            return None
        return int(digits)


class Population:
    """The records HealthDock holds before anyone changes anything, as of ``anchor``
    (00:00 IST that day): every ``created_at``/``updated_at`` is earlier, and appointments
    fall in the eight weeks before it and the four weeks after."""

    def __init__(self, *, seed: int, patients: int, appointments: int, anchor: date) -> None:
        if patients < 0 or appointments < 0 or (appointments and not patients):
            raise ValueError("appointments need patients; sizes must not be negative")
        self.seed = seed
        self.patient_count = patients
        self.appointment_count = appointments
        self.anchor = anchor
        self.patient_ids = IdFormat("PAT", patients)
        self.appointment_ids = IdFormat("APT", appointments)
        self.doctor_count = min(200, max(8, patients // 250))
        self._anchor_s = ist_midnight(anchor)
        self._days = _day_table(anchor)
        self._patients = _random_rows(f"healthdock:{seed}:patients", patients, _PATIENT_ROW)
        self._appointments = _random_rows(
            f"healthdock:{seed}:appointments", appointments, _APPOINTMENT_ROW
        )

    @property
    def nbytes(self) -> int:
        return len(self._patients) + len(self._appointments)

    def doctor_id(self, number: int) -> str:
        return f"DOC{number:03d}"

    def doctor_number(self, doctor_id: str) -> int | None:
        digits = doctor_id[3:]
        if doctor_id.startswith("DOC") and len(digits) == 3 and digits.isdigit():
            return int(digits)
        return None

    def patient(self, index: int) -> Patient:
        """Generated patient ``index`` (1-based)."""
        row = _PATIENT_ROW.unpack_from(self._patients, (index - 1) * _PATIENT_ROW.size)
        (given, surname, other, age, phone, lead, has_abha, abha, created, updated, created_ms,
         updated_ms) = row  # fmt: skip
        age_days = 1 + (age * 95 * _YEAR_DAYS >> 16)
        # Registered within the last three years, and never before birth.
        created_s = self._anchor_s - 1 - created % min(3 * _YEAR_DAYS * _DAY, age_days * _DAY - 1)
        updated_s = created_s + updated % (self._anchor_s - created_s)
        created_ms %= 1000
        updated_ms = updated_ms % 1000 if updated_s > created_s else created_ms
        return Patient(
            id=self.patient_ids.format(index),
            first_name=GIVEN_NAMES[given],
            last_name=SURNAMES[surname],
            date_of_birth=(self.anchor - timedelta(days=age_days)).isoformat(),
            gender="Other" if other < 3 else "M" if given < 128 else "F",
            phone=f"+91{6 + lead % 4}{phone % 1_000_000_000:09d}",
            # About 60% of patients have linked an ABHA number.
            abha_number=str(10**13 + abha % (9 * 10**13)) if has_abha < 154 else None,
            created_at=format_millis(created_s * 1000 + created_ms),
            updated_at=format_millis(updated_s * 1000 + updated_ms),
        )

    def appointment(self, index: int) -> Appointment:
        """Generated appointment ``index`` (1-based)."""
        row = _APPOINTMENT_ROW.unpack_from(self._appointments, (index - 1) * _APPOINTMENT_ROW.size)
        (patient, doctor, day, slot, duration, kind, status, lead, updated, created_ms,
         updated_ms) = row  # fmt: skip
        offset = self._days[day]
        minutes = _FIRST_SLOT_MINUTES + _SLOT_MINUTES * (slot % _SLOTS)
        start_s = self._anchor_s + offset * _DAY + minutes * 60
        type_ = _TYPES[kind]
        length = _DURATIONS[type_][duration % len(_DURATIONS[type_])]
        status_ = (_PAST_STATUSES if offset < 0 else _UPCOMING_STATUSES)[status]
        created_s = start_s - 3600 - lead % (30 * _DAY)
        if created_s >= self._anchor_s:
            created_s = self._anchor_s - 1 - lead % (7 * _DAY)
        if status_ == "completed":
            updated_s = min(self._anchor_s - 1, start_s + length * 60 + updated % 7200)
        elif status_ == "cancelled":
            updated_s = created_s + updated % max(1, min(start_s, self._anchor_s) - created_s)
        else:
            updated_s = created_s + updated % (self._anchor_s - created_s)
        created_ms %= 1000
        updated_ms = updated_ms % 1000 if updated_s > created_s else created_ms
        day_ = self.anchor + timedelta(days=offset)
        return Appointment(
            id=self.appointment_ids.format(index),
            patient_id=self.patient_ids.format(1 + patient % self.patient_count),
            doctor_id=self.doctor_id(1 + doctor % self.doctor_count),
            date_time=f"{day_.isoformat()}T{minutes // 60:02d}:{minutes % 60:02d}:00+05:30",
            duration=length,
            type=type_,
            status=status_,
            created_at=format_millis(created_s * 1000 + created_ms),
            updated_at=format_millis(updated_s * 1000 + updated_ms),
        )

    def patients_named(self, term: str) -> bytes:
        """One byte per generated patient: 1 where ``term`` is in the given name or surname
        (case-insensitive)."""
        needle = term.lower()
        givens = _column(self._patients, _PATIENT_ROW, _GIVEN_AT)
        surnames = _column(self._patients, _PATIENT_ROW, _SURNAME_AT)
        given = _matches(givens, lambda b: needle in GIVEN_NAMES[b].lower())
        surname = _matches(surnames, lambda b: needle in SURNAMES[b].lower())
        return (given | surname).to_bytes(self.patient_count, "little")

    def appointments_matching(
        self, *, day: date | None, doctor: int | None, status: str | None
    ) -> bytes:
        """One byte per generated appointment: 1 where it passes every filter given."""
        count = self.appointment_count
        selected = int.from_bytes(b"\x01" * count, "little")
        days = _column(self._appointments, _APPOINTMENT_ROW, _DAY_AT)
        if day is not None:
            offset = (day - self.anchor).days
            selected &= _matches(days, lambda b: self._days[b] == offset)
        if doctor is not None:
            doctors = _column(self._appointments, _APPOINTMENT_ROW, _DOCTOR_AT)
            selected &= _matches(doctors, lambda b: 1 + b % self.doctor_count == doctor)
        if status is not None:
            statuses = _column(self._appointments, _APPOINTMENT_ROW, _STATUS_AT)
            past = _matches(days, lambda b: self._days[b] < 0)
            upcoming = _matches(days, lambda b: self._days[b] >= 0)
            selected &= (past & _matches(statuses, lambda b: _PAST_STATUSES[b] == status)) | (
                upcoming & _matches(statuses, lambda b: _UPCOMING_STATUSES[b] == status)
            )
        return selected.to_bytes(count, "little")


def _column(rows: bytearray, row: struct.Struct, offset: int) -> bytes:
    """One byte of every row: a field of every record, in index order."""
    return bytes(rows[offset :: row.size])


def _matches(column: bytes, wanted: Callable[[int], bool]) -> int:
    """The column as one integer with a 1 in each byte whose value is ``wanted``: combined
    with ``&`` and ``|``, such integers evaluate filters over a million rows at C speed."""
    table = bytes(1 if wanted(value) else 0 for value in range(256))
    return int.from_bytes(column.translate(table), "little")


def _random_rows(label: str, count: int, row: struct.Struct) -> bytearray:
    # Drawn in fixed chunks of whole 32-bit words: record i is the same whatever the count.
    size = count * row.size
    rng = random.Random(label)  # noqa: S311 -- reproducible test data, not secrets
    rows = bytearray(size)
    for start in range(0, size, _CHUNK):
        rows[start : start + _CHUNK] = rng.randbytes(min(_CHUNK, size - start))
    return rows


def _day_table(anchor: date) -> tuple[int, ...]:
    """256 day offsets from ``anchor``, each day of the window appearing in proportion to how
    busy its weekday is."""
    offsets = range(-7 * _WEEKS_BACK, 7 * _WEEKS_AHEAD)
    weights = [_WEEKDAY_WEIGHT[(anchor + timedelta(days=o)).weekday()] for o in offsets]
    total = sum(weights)
    table: list[int] = []
    reached = 0.0
    for offset, weight in zip(offsets, weights, strict=True):
        reached += weight
        while len(table) < 256 and (len(table) + 0.5) / 256 <= reached / total:
            table.append(offset)
    return tuple(table)
