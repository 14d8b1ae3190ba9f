"""Scale-out on PostgreSQL: several processes sharing one database.

Two receivers get every event at the same moment (duplicates across processes): each event
is stored once, has one effect on the mirror, and one receiver says ``applied`` while the
other says ``duplicate``. Two reconcile workers: one reconcile at a time, and when the lease
holder is SIGKILLed mid-pass, the other takes the lease once it expires, resumes the very
pass the dead one left, and the mirror converges to HealthDock's truth. Each test prints its
counts (the README's Reliability table quotes them).
"""

from __future__ import annotations

import itertools
import os
import signal
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import Engine, func, select

from fake_healthdock import FakeHealthDock, Faults, serve_in_thread
from mirror.database import create_mirror_engine
from mirror.events import Resource
from mirror.migrate import upgrade
from mirror.schema import appointments, leases, patients, sync_runs, webhook_events
from tests.factories import event, patient
from tests.support.load import Load, new_patients
from tests.support.runs import run_outcome
from tests.support.services import Service, serve, worker
from tests.support.waiting import wait_for

SENDERS = 8
EVENTS = 1200
SHARED_RECORDS = 10
_EPOCH = datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    migrated = create_mirror_engine(postgres_url)
    upgrade(migrated)
    yield migrated
    migrated.dispose()


# --- two receivers --------------------------------------------------------------------------

_own_record = new_patients("own")


def _events(sender: int, number: int) -> dict[str, Any]:
    """Two in three events create a record of their own; one in three updates one of a few
    shared records, each update a distinct version (so the newest one must win)."""
    if number % 3:
        return _own_record(sender, number)
    moment = _EPOCH + timedelta(milliseconds=number * SENDERS + sender)
    return event(
        "patient.updated",
        patient(
            f"shared-{(sender + number) % SHARED_RECORDS}", phone=f"+91{number:06d}{sender:02d}"
        ),
        timestamp=moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        event_id=f"update-{sender}-{number}",
    )


def _count_record_writes(engine: Engine) -> None:
    """Every row written to ``patients`` (inserted or updated) is noted in ``record_writes``."""
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE record_writes (id text NOT NULL)")
        connection.exec_driver_sql(
            "CREATE FUNCTION note_record_write() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN INSERT INTO record_writes VALUES (NEW.id); RETURN NEW; END $$"
        )
        connection.exec_driver_sql(
            "CREATE TRIGGER note_record_write AFTER INSERT OR UPDATE ON patients "
            "FOR EACH ROW EXECUTE FUNCTION note_record_write()"
        )


def test_two_receivers_given_the_same_events_store_and_apply_each_once(
    postgres_url: str, engine: Engine, tmp_path: Path
) -> None:
    _count_record_writes(engine)
    with (
        serve(postgres_url, tmp_path / "receiver-a.log") as first,
        serve(postgres_url, tmp_path / "receiver-b.log") as second,
        Load(
            [first.base_url, second.base_url], _events, senders=SENDERS, max_events=EVENTS
        ) as load,
    ):
        load.wait_until_done()
    ledger = load.ledger
    with engine.connect() as connection:
        stored = Counter(connection.execute(select(webhook_events.c.event_id)).scalars())
        writes = Counter(connection.exec_driver_sql("SELECT id FROM record_writes").scalars())
        phones = dict(connection.execute(select(patients.c.id, patients.c.phone)).all())
    receipts = Counter(tuple(sorted(statuses)) for statuses in ledger.receipts.values())
    own = [event_id for event_id in ledger.acknowledged if event_id.startswith("own-")]
    print(
        f"\nscale-out: receivers=2 {ledger.line()} rows={sum(stored.values())} "
        f"receipts={dict(receipts)} own-record-writes={Counter(writes[i] for i in own)}"
    )

    assert ledger.events == EVENTS
    assert set(ledger.answers) == {200}, ledger.line()
    # Every event reached both receivers: one applied it, the other acknowledged a duplicate.
    assert receipts == {("applied", "duplicate"): EVENTS}
    # One row per event in the event log.
    assert stored == Counter({event_id: 1 for event_id in ledger.acknowledged})
    # One effect per event: a record of its own is written exactly once, by one process.
    assert {event_id: writes[event_id] for event_id in own} == {event_id: 1 for event_id in own}
    # Shared records hold their newest update, whichever process got which copy first.
    newest: dict[str, tuple[str, str]] = {}
    for event_id in ledger.acknowledged:
        if event_id.startswith("update-"):
            _, sender, number = event_id.split("-")
            document = _events(int(sender), int(number))
            record, phone = document["data"]["patient_id"], document["data"]["phone"]
            newest[record] = max(newest.get(record, ("", "")), (document["timestamp"], phone))
    assert {record: phones[record] for record in newest} == {
        record: phone for record, (_, phone) in newest.items()
    }


# --- two workers ----------------------------------------------------------------------------

API_KEY = "scale-out-key"
LEASE_SECONDS = 2


def _running_pass(engine: Engine) -> tuple[int, str] | None:
    """A full patients pass some pages into its run, and who holds the lease meanwhile."""
    with engine.connect() as connection:
        run = connection.execute(
            select(sync_runs.c.id, sync_runs.c.checkpoint).where(
                sync_runs.c.kind.in_(("backfill", "full")),
                sync_runs.c.resource == "patient",
                sync_runs.c.outcome == "running",
            )
        ).first()
        holder = connection.execute(
            select(leases.c.holder).where(leases.c.expires_at > datetime.now(UTC))
        ).scalar()
    if run is None or holder is None or int((run.checkpoint or {}).get("page", 0)) < 3:
        return None
    return int(run.id), str(holder)


def _passes_started_after(
    engine: Engine, moment: datetime, resources: set[str] | None = None
) -> set[str] | None:
    """Resources with a successful full pass started after ``moment``, once ``resources``
    (both by default) have one."""
    with engine.connect() as connection:
        done = set(
            connection.execute(
                select(sync_runs.c.resource).where(
                    sync_runs.c.kind.in_(("backfill", "full")),
                    sync_runs.c.outcome == "success",
                    sync_runs.c.started_at > moment,
                )
            ).scalars()
        )
    return done if done >= (resources or {"patient", "appointment"}) else None


def _mirror(engine: Engine, resource: Resource) -> dict[str, Any]:
    table = patients if resource is Resource.PATIENT else appointments
    with engine.connect() as connection:
        rows = connection.execute(
            select(table.c.id, table.c.raw).where(table.c.deleted_at.is_(None))
        )
        return {row.id: _without_key(row.raw, resource) for row in rows}


def _truth(fake: FakeHealthDock, resource: Resource) -> dict[str, Any]:
    records = fake.patients() if resource is Resource.PATIENT else fake.appointments()
    return {record.id: _without_key(msgspec.to_builtins(record), resource) for record in records}


def _without_key(record: dict[str, Any], resource: Resource) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("id", resource.id_field)}


def _slow_fake() -> FakeHealthDock:
    """Ten records a page, one page at a time, 0.1-0.15 s a page: a pass takes a few seconds."""
    return FakeHealthDock(
        seed=11, patients=240, appointments_per_patient=0.5, api_key=API_KEY, rate_limit=None,
        faults=Faults(latency=(0.1, 0.15)),
    )  # fmt: skip


def _worker_settings(base_url: str) -> dict[str, object]:
    return {
        "api_url": f"{base_url}/v1", "api_key": API_KEY, "sync_interval_minutes": 0.02,
        "sync_concurrency": 1, "sync_page_size": 10, "sync_lease_seconds": LEASE_SECONDS,
        "sync_upcoming_minutes": 60,
    }  # fmt: skip


def test_a_killed_lease_holder_is_taken_over_and_its_pass_resumed(
    postgres_url: str, engine: Engine, tmp_path: Path
) -> None:
    fake = _slow_fake()
    with serve_in_thread(fake) as base_url:
        settings = _worker_settings(base_url)
        with (
            worker(postgres_url, tmp_path / "worker-0.log", **settings) as first,
            worker(postgres_url, tmp_path / "worker-1.log", **settings) as second,
        ):
            by_holder: dict[str, Service] = {}
            for service in (first, second):
                by_holder[str(service.pid)] = service
            run_id, holder = wait_for(lambda: _running_pass(engine), "no pass got under way")
            victim = by_holder[_holder_pid(holder)]
            survivor = second if victim is first else first
            victim.kill()
            killed_at = datetime.now(UTC)
            # HealthDock changes while nobody reconciles: the next passes must heal it.
            httpx.post(f"{base_url}/_fake/mutate", json={"count": 20}).raise_for_status()
            wait_for(
                lambda: run_outcome(engine, run_id) == "success" or None,
                f"the killed pass was not resumed:\n{survivor.output()[-3000:]}",
            )
            wait_for(
                lambda: _passes_started_after(engine, killed_at),
                f"no complete reconcile after the takeover:\n{survivor.output()[-3000:]}",
            )
        with engine.connect() as connection:
            runs = connection.execute(
                select(sync_runs)
                .where(sync_runs.c.kind.in_(("backfill", "full")))
                .order_by(sync_runs.c.id)
            ).all()
            stale = connection.execute(
                select(func.count())
                .select_from(sync_runs)
                .where(sync_runs.c.outcome == "running", sync_runs.c.started_at < killed_at)
            ).scalar_one()
        for resource in Resource:
            assert _mirror(engine, resource) == _truth(fake, resource)
    killed = next(run for run in runs if run.id == run_id)
    print(
        f"\nlease takeover: workers=2 lease={LEASE_SECONDS}s killed-run={run_id} "
        f"resumed-and-finished={killed.outcome} passes={len(runs)} "
        f"outcomes={dict(Counter(run.outcome for run in runs))}"
    )
    # The dead worker's run was resumed and finished by the other, not started over.
    assert killed.outcome == "success"
    assert _aware(killed.finished_at) > killed_at
    assert stale == 0, "a pass begun before the kill is still marked running"
    # One reconcile at a time: no two full passes overlap.
    spans = sorted(
        (_aware(run.started_at), _aware(run.finished_at)) for run in runs if run.finished_at
    )
    for (_, first_end), (second_start, _) in itertools.pairwise(spans):
        assert first_end <= second_start, "two reconciles overlapped"
    assert "reconcile skipped: another reconcile is running" in survivor.output()


def _named(database_url: str, application: str) -> str:
    """``database_url`` whose sessions carry ``application`` as their application_name."""
    return f"{database_url}{'&' if '?' in database_url else '?'}application_name={application}"


def _note_run_writes(engine: Engine) -> None:
    """Every write to ``sync_runs`` is noted with the writing process's application name."""
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE run_writes (application text, operation text, outcome text, "
            "at timestamptz)"
        )
        connection.exec_driver_sql(
            "CREATE FUNCTION note_run_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO run_writes VALUES (current_setting('application_name'), TG_OP, "
            "NEW.outcome, clock_timestamp()); RETURN NEW; END $$"
        )
        connection.exec_driver_sql(
            "CREATE TRIGGER note_run_write AFTER INSERT OR UPDATE ON sync_runs "
            "FOR EACH ROW EXECUTE FUNCTION note_run_write()"
        )


def _holder_pid(holder: str) -> str:
    """The process id in a lease holder's name (host:pid:taking)."""
    return holder.split(":")[-2]


def _lease_holder(engine: Engine) -> str | None:
    with engine.connect() as connection:
        holder = connection.execute(
            select(leases.c.holder).where(leases.c.expires_at > datetime.now(UTC))
        ).scalar()
    return None if holder is None else str(holder)


def test_a_paused_lease_holder_stops_once_it_finds_its_lease_taken_over(
    postgres_url: str, engine: Engine, tmp_path: Path
) -> None:
    """A holder frozen past its lease (SIGSTOP: a long GC pause, a VM migration) wakes up to
    find another process reconciling: it must stop, not finish the pass alongside it."""
    _note_run_writes(engine)
    fake = _slow_fake()
    with serve_in_thread(fake) as base_url:
        settings = _worker_settings(base_url)
        with (
            worker(_named(postgres_url, "w0"), tmp_path / "w0.log", **settings) as first,
            worker(_named(postgres_url, "w1"), tmp_path / "w1.log", **settings) as second,
        ):
            names = {first.pid: "w0", second.pid: "w1"}
            run_id, holder = wait_for(lambda: _running_pass(engine), "no pass got under way")
            victim = first if _holder_pid(holder) == str(first.pid) else second
            survivor = second if victim is first else first
            os.killpg(victim.pid, signal.SIGSTOP)
            stopped_at = datetime.now(UTC)
            try:
                wait_for(
                    lambda: _holder_pid(_lease_holder(engine) or "::") == str(survivor.pid) or None,
                    "the lease was not taken over",
                )
            finally:
                os.killpg(victim.pid, signal.SIGCONT)
            wait_for(
                lambda: run_outcome(engine, run_id) == "success" or None,
                f"the pass was not finished:\n{survivor.output()[-3000:]}",
            )
            # Time for the woken holder to misbehave: the rest of the reconcile, appointments.
            wait_for(
                lambda: _passes_started_after(engine, stopped_at, {"appointment"}),
                f"no appointments pass after the takeover:\n{survivor.output()[-3000:]}",
            )
        with engine.connect() as connection:
            writes = connection.exec_driver_sql(
                "SELECT application, operation, outcome, at FROM run_writes ORDER BY at"
            ).all()
    survivor_writes = [w.at for w in writes if w.application == names[survivor.pid]]
    # While the survivor holds the lease (its first to its last write of the reconcile): once
    # it lets go, the woken process may rightly take the lease again for a later reconcile.
    taken_over, let_go = min(survivor_writes), max(survivor_writes)
    late = [w for w in writes if w.application == names[victim.pid] and taken_over < w.at < let_go]
    print(
        f"\npaused holder: lease={LEASE_SECONDS}s run={run_id} victim-writes-after-takeover="
        f"{len(late)} ({Counter((w.operation, w.outcome) for w in late)})"
    )
    # Perhaps the page it was writing when it froze, but it neither finished a pass nor
    # began one: the reconcile went on in the other process only.
    assert [w for w in late if w.operation == "INSERT" or w.outcome != "running"] == []
    assert "this reconcile stopped" in victim.output()


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
