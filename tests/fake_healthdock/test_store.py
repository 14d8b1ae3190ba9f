"""The store: id-ordered pages over generated and changed records, filters, versions."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_healthdock import FakeHealthDock, ManualClock, NotFound
from fake_healthdock.clock import parse_millis
from tests.fake_healthdock.harness import MakeFake

ANCHOR = date(2026, 1, 1)


@settings(max_examples=40, deadline=None)
@given(
    deleted=st.sets(st.integers(1, 60), max_size=40),
    created=st.integers(0, 10),
    limit=st.integers(1, 25),
)
def test_pages_hold_the_live_records_in_id_order(
    deleted: set[int], created: int, limit: int
) -> None:
    fake = FakeHealthDock(seed=1, patients=60, clock=ManualClock(), rate_limit=None)
    for _ in range(created):
        fake.create_patient(_new_patient())
    for index in sorted(deleted):
        fake.delete_patient(f"PAT{index:06d}")
    expected = [p.id for p in fake.patients()]
    assert len(expected) == 60 + created - len(deleted)
    paged: list[str] = []
    page = 1
    while True:
        listing = fake.store.list_patients(page=page, limit=limit, search=None)
        assert listing.total_count == len(expected)
        if not listing.records:
            break
        paged += [p.id for p in listing.records]
        page += 1
    assert paged == expected == sorted(expected)
    assert page - 1 == listing.total_pages


def test_filters_agree_with_a_scan_of_the_truth(make_fake: MakeFake) -> None:
    fake = make_fake(patients=400)
    fake.mutate(150)  # changed, added and deleted records must filter like generated ones
    appointments = list(fake.appointments())
    day = date.fromisoformat(appointments[0].date_time[:10])
    doctor = appointments[0].doctor_id
    for filters in (
        {"day": day},
        {"doctor_id": doctor},
        {"status": "confirmed"},
        {"status": "completed", "doctor_id": doctor},
        {"day": day, "status": "scheduled"},
        {"day": day, "doctor_id": doctor, "status": appointments[0].status},
    ):
        wanted = [
            a.id
            for a in appointments
            if ("day" not in filters or a.date_time[:10] == str(filters["day"]))
            and a.doctor_id == filters.get("doctor_id", a.doctor_id)
            and a.status == filters.get("status", a.status)
        ]
        options = {"day": None, "doctor_id": None, "status": None, **filters}
        listing = fake.store.list_appointments(page=1, limit=100, **options)  # type: ignore[arg-type]
        assert [a.id for a in listing.records] == wanted[:100], filters
        assert listing.total_count == len(wanted)


def test_name_search_agrees_with_a_scan_of_the_truth(make_fake: MakeFake) -> None:
    fake = make_fake(patients=500)
    renamed = fake.update_patient("PAT000010", {"last_name": "Zzyzxsharmazz"})
    for term in ("shar", "SHARMA", "an", "zzyzx", "nobody"):
        wanted = [
            p.id
            for p in fake.patients()
            if term.lower() in p.first_name.lower() or term.lower() in p.last_name.lower()
        ]
        listing = fake.store.list_patients(page=1, limit=100, search=term)
        assert [p.id for p in listing.records] == wanted[:100], term
        assert listing.total_count == len(wanted)
    assert fake.store.list_patients(page=1, limit=10, search="zzyzx").records == [renamed]


def test_updated_at_strictly_increases_even_when_the_clock_stands_still(
    make_fake: MakeFake, clock: ManualClock
) -> None:
    fake = make_fake()
    stamps = [
        fake.update_patient("PAT000001", {"phone": f"+9198765432{i:02d}"}).updated_at
        for i in range(5)
    ]
    millis = [parse_millis(stamp) for stamp in stamps]
    assert millis == sorted(set(millis))
    assert stamps[0] == "2026-01-01T00:00:00.000Z"
    deletion = fake.store.delete_patient("PAT000001")
    assert parse_millis(deletion.timestamp) > millis[-1]
    clock.advance(3600)
    assert fake.create_patient(_new_patient()).created_at == "2026-01-01T01:00:00.000Z"


def test_changes_are_recorded_and_absent_records_are_not_found(make_fake: MakeFake) -> None:
    fake = make_fake()
    assert fake.update_appointment("APT000002", {"duration": 60}).duration == 60
    assert fake.appointment("APT000002").duration == 60  # type: ignore[union-attr]
    fake.delete_appointment("APT000002")
    assert fake.appointment("APT000002") is None
    with pytest.raises(NotFound):
        fake.delete_appointment("APT000002")
    with pytest.raises(NotFound):
        fake.update_patient("PAT999999", {"phone": "+919876543210"})
    assert fake.counts() == {"patients": 300, "appointments": 599}


def test_iterating_the_truth_is_lazy(make_fake: MakeFake) -> None:
    patients = make_fake(patients=300).patients()
    assert next(patients).id == "PAT000001"
    assert next(patients).id == "PAT000002"


def _new_patient() -> dict[str, object]:
    return {
        "first_name": "Meera",
        "last_name": "Iyer",
        "date_of_birth": "1990-02-03",
        "gender": "F",
        "phone": "+919812345678",
    }
