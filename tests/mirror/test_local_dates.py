"""appointments.local_date: every writer (receiver, reconcile, replay) keeps it in the engine's
zone, HEALTHDOCK_TIMEZONE; ``recompute_local_dates`` brings the rows to a new zone. On SQLite
and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient
from sqlalchemy import Engine, delete, select

from fake_healthdock import FakeHealthDock
from mirror.database import create_mirror_engine, read_transaction, write_transaction
from mirror.eventlog import Outcome, store_events
from mirror.events import Resource, record_write
from mirror.ingest import ingest
from mirror.local_dates import LOCAL_DATE_TIMEZONE, local_date_zone, recompute_local_dates
from mirror.migrate import upgrade
from mirror.records import apply_writes
from mirror.replay import Selection, replay
from mirror.schema import appointments, mirror_settings
from mirror.states import EventStatus
from mirror.versions import Action
from receiver import create_app
from sync import PassOptions, reconcile
from tests.conftest import make_settings
from tests.factories import appointment, encode, event, signed
from tests.support.stored_events import incoming
from tests.sync.conftest import API_KEY, Upstream

KOLKATA = ZoneInfo("Asia/Kolkata")
NEW_YORK = ZoneInfo("America/New_York")
# 01:30 on the 6th in Kolkata (UTC+05:30), 15:00 on the 5th in New York (UTC-05:00).
EVENING_UTC = "2026-03-05T20:00:00Z"


@contextlib.contextmanager
def zoned(database_url: str, zone: ZoneInfo) -> Iterator[Engine]:
    """An engine on the (migrated) mirror whose writers use ``zone``, as the service's does."""
    engine = create_mirror_engine(database_url, timeout_seconds=2.0, local_timezone=zone)
    try:
        yield engine
    finally:
        engine.dispose()


def rows_of(engine: Engine) -> dict[str, tuple[datetime | None, date | None]]:
    """Each appointment's (date_time as aware UTC, local_date)."""
    with engine.connect() as connection:
        query = select(appointments.c.id, appointments.c.date_time, appointments.c.local_date)
        return {
            row.id: (None if row.date_time is None else _utc(row.date_time), row.local_date)
            for row in connection.execute(query)
        }


def local_dates(engine: Engine) -> dict[str, date | None]:
    return {record_id: day for record_id, (_, day) in rows_of(engine).items()}


def day_in(moment: datetime | None, zone: ZoneInfo) -> date | None:
    """The oracle: the instant's calendar day in ``zone``, None where no date can hold it."""
    if moment is None:
        return None
    try:
        return moment.astimezone(zone).date()
    except OverflowError:
        return None


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def booked(record_id: str, date_time: object, timestamp: str = "2026-01-01T00:00:00Z") -> Any:
    return incoming(event("appointment.created", appointment(record_id, date_time=date_time),
                          timestamp))  # fmt: skip


def test_an_event_lands_with_its_day_in_the_default_zone(engine: Engine) -> None:
    ingest(engine, [booked("APT1", EVENING_UTC)])
    assert local_dates(engine) == {"APT1": date(2026, 3, 6)}


def test_a_webhook_lands_with_its_day_in_the_configured_zone(
    database_url: str, engine: Engine
) -> None:
    # Through the receiver: the committer, a process of its own, writes in the setting's zone.
    settings_ = make_settings(database_url, timezone="America/New_York")
    body = encode(event("appointment.created", appointment("APT1", date_time=EVENING_UTC)))
    with TestClient(create_app(settings_)) as client:
        response = client.post("/webhooks/healthdock", content=body, headers=signed(body))
    assert response.status_code == 200, response.text
    assert local_dates(engine) == {"APT1": date(2026, 3, 5)}


def test_a_reconcile_writes_local_dates_in_the_engines_zone(database_url: str) -> None:
    fake = FakeHealthDock(
        seed=5, patients=30, appointments_per_patient=1.5, api_key=API_KEY, rate_limit=None
    )
    evening = fake.create_appointment(
        {"patient_id": next(fake.patients()).id, "doctor_id": "DOC01", "date_time": EVENING_UTC}
    )
    upstream = Upstream(fake)

    async def backfill(engine: Engine) -> None:
        async with upstream.client() as client:
            await reconcile(engine, client, Resource.APPOINTMENT, PassOptions())

    with zoned(database_url, NEW_YORK) as engine:
        upgrade(engine)
        asyncio.run(backfill(engine))
        rows = rows_of(engine)
    assert len(rows) > 30
    assert rows[evening.id][1] == date(2026, 3, 5)
    assert {i: day for i, (_, day) in rows.items()} == {
        i: day_in(moment, NEW_YORK) for i, (moment, _) in rows.items()
    }


def test_a_replay_writes_local_dates_in_the_engines_zone(database_url: str, engine: Engine) -> None:
    # Stored but never applied (the database refused it, say): the replay applies it.
    write_transaction(
        engine,
        lambda c: store_events(
            c, [(booked("APT1", EVENING_UTC), Outcome(EventStatus.FAILED, None, "apply failed"))]
        ),
    )
    assert local_dates(engine) == {}
    with zoned(database_url, NEW_YORK) as new_york:
        summary = replay(new_york, Selection(statuses=("failed",)))
    assert summary.failed == 0
    assert local_dates(engine) == {"APT1": date(2026, 3, 5)}


def test_a_zone_with_daylight_saving_time(database_url: str, engine: Engine) -> None:
    # New York is UTC-5 in winter and UTC-4 from 2026-03-08 07:00Z to 2026-11-01 06:00Z: each
    # of these instants falls on another day if the offset of the wrong season is used.
    instants = {
        "WINTER": ("2026-03-08T04:30:00Z", date(2026, 3, 7)),  # 23:30 EST
        "SPRING": ("2026-03-09T04:30:00Z", date(2026, 3, 9)),  # 00:30 EDT
        "AUTUMN": ("2026-11-01T04:30:00Z", date(2026, 11, 1)),  # 00:30 EDT
        "FALLEN": ("2026-11-02T04:30:00Z", date(2026, 11, 1)),  # 23:30 EST
        "OFFSET": ("2026-07-01T09:00:00+05:30", date(2026, 6, 30)),  # 23:30 EDT
    }
    with zoned(database_url, NEW_YORK) as new_york:
        ingest(new_york, [booked(name, moment) for name, (moment, _) in instants.items()])
    assert local_dates(engine) == {name: day for name, (_, day) in instants.items()}


def test_no_date_time_means_no_local_date(engine: Engine) -> None:
    ingest(
        engine,
        [
            booked("MISSING", None),
            booked("GARBAGE", "next tuesday"),
            # An event that names its record only: no date_time at all.
            incoming(event("appointment.confirmed", {"appointment_id": "BARE"})),
            booked("LATER", "soon"),
        ],
    )
    assert local_dates(engine) == {"MISSING": None, "GARBAGE": None, "BARE": None, "LATER": None}
    # A newer version with a date_time sets it; a still newer one without clears it again.
    ingest(engine, [booked("LATER", EVENING_UTC, "2026-02-01T00:00:00Z")])
    assert local_dates(engine)["LATER"] == date(2026, 3, 6)
    ingest(engine, [booked("LATER", "unknown", "2026-02-02T00:00:00Z")])
    assert local_dates(engine)["LATER"] is None


def test_a_delete_keeps_the_last_known_local_date(engine: Engine) -> None:
    ingest(engine, [booked("APT1", EVENING_UTC)])
    ingest(
        engine,
        [incoming(event("appointment.deleted", {"appointment_id": "APT1"},
                        "2026-02-01T00:00:00Z"))],
    )  # fmt: skip
    assert local_dates(engine) == {"APT1": date(2026, 3, 6)}


def test_recompute_brings_every_row_to_the_new_zone(engine: Engine) -> None:
    ingest(engine, [booked(f"APT{i}", f"2026-03-0{i}T20:00:00Z") for i in range(1, 6)])
    ingest(engine, [booked("NONE", None), booked("MORNING", "2026-03-05T12:00:00Z")])
    assert read_transaction(engine, local_date_zone) == "Asia/Kolkata"  # the migration's
    seen: list[tuple[int, int]] = []

    result = recompute_local_dates(engine, NEW_YORK, batch=2, progress=lambda *p: seen.append(p))

    # The five evenings move back a day; the morning and the NULL stay as they were.
    assert (result.read, result.changed) == (7, 5)
    assert seen == [(0, 7), (2, 7), (4, 7), (6, 7), (7, 7)]
    assert {i: day for i, (_, day) in rows_of(engine).items()} == {
        i: day_in(moment, NEW_YORK) for i, (moment, _) in rows_of(engine).items()
    }
    assert read_transaction(engine, local_date_zone) == "America/New_York"
    # Idempotent: nothing left to change, and the zone's changed_at stays.
    changed_at = _changed_at(engine)
    again = recompute_local_dates(engine, NEW_YORK, batch=3)
    assert (again.read, again.changed) == (7, 0)
    assert _changed_at(engine) == changed_at


def test_recompute_on_an_empty_mirror_records_the_zone(engine: Engine) -> None:
    result = recompute_local_dates(engine, NEW_YORK)
    assert (result.read, result.changed) == (0, 0)
    assert read_transaction(engine, local_date_zone) == "America/New_York"


def _changed_at(engine: Engine) -> object:
    with engine.connect() as connection:
        return connection.execute(
            select(mirror_settings.c.changed_at).where(
                mirror_settings.c.name == LOCAL_DATE_TIMEZONE
            )
        ).scalar_one()


# Instants where zones disagree on the day: near midnight UTC, across DST changes, at the ends
# of what a date can hold; and values that are no instant at all.
_INSTANTS = st.sampled_from(
    [
        EVENING_UTC,
        "2026-03-05T18:29:59Z",
        "2026-03-05T18:30:00Z",
        "2026-03-08T06:59:59Z",
        "2026-03-08T07:00:00Z",
        "2026-11-01T05:30:00Z",
        "2026-11-01T06:30:00Z",
        "2026-04-05T15:45:00+13:45",
        "2026-01-01T00:00:00-12:00",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:00:00Z",
        "not a time",
        None,
    ]
)
_ZONES = st.sampled_from(
    ["Asia/Kolkata", "America/New_York", "UTC", "Pacific/Chatham", "Pacific/Kiritimati",
     "Etc/GMT+12", "Australia/Lord_Howe"]
)  # fmt: skip
_WRITES = st.lists(
    st.tuples(
        st.sampled_from(["APT1", "APT2", "APT3"]),
        st.sampled_from([Action.CREATE, Action.UPDATE, Action.DELETE]),
        st.integers(min_value=0, max_value=5),  # the version's second
        _INSTANTS,
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(zone_name=_ZONES, writes=_WRITES, order=st.randoms(use_true_random=False),
       batches=st.integers(min_value=1, max_value=4))  # fmt: skip
def test_local_date_is_always_date_time_in_the_zone(
    engine: Engine, zone_name: str, writes: list[Any], order: Any, batches: int
) -> None:
    """Whatever the writes and their order (one batch or several), each row's local_date is
    its date_time's day in the engine's zone, and the rows are the same in every order."""
    zone = ZoneInfo(zone_name)
    zoned_engine = engine.execution_options(local_timezone=zone)
    record_writes = [
        record_write(Resource.APPOINTMENT, action, f"2026-01-01T00:00:0{second}Z",
                     appointment(record_id, date_time=moment))
        for record_id, action, second, moment in writes
    ]  # fmt: skip

    def apply_in(sequence: list[Any]) -> dict[str, tuple[datetime | None, date | None]]:
        write_transaction(engine, lambda c: c.execute(delete(appointments)))
        size = -(-len(sequence) // batches)
        for start in range(0, len(sequence), size):
            chunk = sequence[start : start + size]
            write_transaction(zoned_engine, lambda c, chunk=chunk: apply_writes(c, chunk))
        return rows_of(engine)

    given_order = apply_in(record_writes)
    shuffled = list(record_writes)
    order.shuffle(shuffled)
    assert apply_in(shuffled) == given_order
    for record_id, (moment, day) in given_order.items():
        assert day == day_in(moment, zone), record_id
