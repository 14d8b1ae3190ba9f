"""The seeded population: reproducible, and realistic enough to pass for a hospital's data."""

from __future__ import annotations

import re
from collections import Counter
from datetime import date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from fake_healthdock.clock import ist_midnight
from fake_healthdock.population import Population
from tests.fake_healthdock.harness import MakeFake

ANCHOR = date(2026, 1, 1)
STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def test_the_same_seed_and_size_give_the_same_records(make_fake: MakeFake) -> None:
    one, two = make_fake(seed=3, patients=400), make_fake(seed=3, patients=400)
    assert list(one.patients()) == list(two.patients())
    assert list(one.appointments()) == list(two.appointments())


def test_another_seed_gives_other_records(make_fake: MakeFake) -> None:
    one, two = make_fake(seed=3, patients=50), make_fake(seed=4, patients=50)
    assert [p.phone for p in one.patients()] != [p.phone for p in two.patients()]


def test_a_patient_does_not_depend_on_the_population_size() -> None:
    small = Population(seed=1, patients=10, appointments=0, anchor=ANCHOR)
    large = Population(seed=1, patients=5000, appointments=0, anchor=ANCHOR)
    assert small.patient(7).phone == large.patient(7).phone


def test_patients_look_like_a_hospitals(make_fake: MakeFake) -> None:
    patients = list(make_fake(patients=3000).patients())
    assert [p.id for p in patients[:2]] == ["PAT000001", "PAT000002"]
    assert len({(p.first_name, p.last_name) for p in patients}) > 1000
    assert all(re.fullmatch(r"\+91[6-9]\d{9}", p.phone) for p in patients)
    with_abha = [p.abha_number for p in patients if p.abha_number is not None]
    assert 0.55 < len(with_abha) / len(patients) < 0.65
    assert all(re.fullmatch(r"[1-9]\d{13}", number) for number in with_abha)
    genders = Counter(p.gender for p in patients)
    assert genders["M"] > 1000
    assert genders["F"] > 1000
    assert 0 < genders["Other"] < 100
    for p in patients:
        born = date.fromisoformat(p.date_of_birth)
        assert date(1930, 1, 1) < born < ANCHOR
        assert STAMP.fullmatch(p.created_at)
        assert STAMP.fullmatch(p.updated_at)
        assert p.created_at <= p.updated_at
        assert _instant(p.created_at) >= datetime.fromisoformat(f"{p.date_of_birth}T00:00+05:30")


def test_appointments_mix_types_and_statuses_over_past_and_coming_weeks(
    make_fake: MakeFake,
) -> None:
    fake = make_fake(patients=2000, appointments_per_patient=1.5)
    appointments = list(fake.appointments())
    assert len(appointments) == 3000
    patient_ids = {p.id for p in fake.patients()}
    assert {a.patient_id for a in appointments} <= patient_ids
    types = Counter(a.type for a in appointments)
    assert types["consultation"] > types["follow-up"] > types["procedure"] > 0
    anchor = ist_midnight(ANCHOR)
    past = Counter(a.status for a in appointments if _start(a.date_time) < anchor)
    coming = Counter(a.status for a in appointments if _start(a.date_time) >= anchor)
    assert set(past) == {"completed", "cancelled"}
    assert past["completed"] > past["cancelled"]
    assert set(coming) == {"scheduled", "confirmed", "cancelled"}
    days = {datetime.fromisoformat(a.date_time).date() for a in appointments}
    assert min(days) >= ANCHOR - timedelta(weeks=8)
    assert max(days) < ANCHOR + timedelta(weeks=4)
    assert len(days) > 60
    sundays = sum(datetime.fromisoformat(a.date_time).weekday() == 6 for a in appointments)
    assert sundays < len(appointments) / 20
    for a in appointments:
        assert a.date_time.endswith("+05:30")
        assert a.duration in (15, 20, 30, 45, 60, 90, 120)
        assert re.fullmatch(r"DOC\d{3}", a.doctor_id)
        assert a.created_at <= a.updated_at < "2025-12-31T18:30:00.000Z"  # 00:00 IST


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), index=st.integers(1, 40))
def test_every_generated_record_is_well_formed(seed: int, index: int) -> None:
    population = Population(seed=seed, patients=40, appointments=40, anchor=ANCHOR)
    patient, appointment = population.patient(index), population.appointment(index)
    assert patient.gender in ("M", "F", "Other")
    assert patient.first_name
    assert patient.last_name
    assert STAMP.fullmatch(patient.updated_at)
    assert patient.created_at <= patient.updated_at
    assert appointment.type in ("consultation", "follow-up", "procedure")
    assert appointment.created_at <= appointment.updated_at


def _instant(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def _start(date_time: str) -> float:
    return datetime.fromisoformat(date_time).timestamp()
