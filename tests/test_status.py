"""``healthdock-mirror status`` on a mirror of known content, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, update

from healthdock_mirror.cli import main
from healthdock_mirror.status import gather_status
from mirror import runs
from mirror.database import create_mirror_engine, write_transaction
from mirror.eventlog import IncomingEvent, Outcome, dedup_key, store_events
from mirror.events import parse_event
from mirror.ingest import ingest
from mirror.migrate import upgrade
from mirror.schema import sync_runs
from mirror.states import EventSource, EventStatus, RunKind, RunOutcome
from tests.factories import (
    PATIENT_ABHA,
    PATIENT_DOB,
    PATIENT_NAME,
    PATIENT_PHONE,
    appointment,
    encode,
    event,
    patient,
)

NOW = datetime.now(UTC)


def incoming(
    event_type: str, data: dict[str, Any], received_at: datetime, *,
    source: str = EventSource.WEBHOOK, timestamp: str = "2024-01-12T10:30:00Z",
) -> IncomingEvent:  # fmt: skip
    document = event(event_type, data, timestamp=timestamp)
    body = encode(document)
    parsed = parse_event(document)
    return IncomingEvent(source, dedup_key(parsed.event_id, body), parsed, body, [], received_at)


def store(engine: Engine, item: IncomingEvent, outcome: Outcome) -> int:
    """An event left in the log unapplied (pending, failed), as the receiver or replay would."""
    stored = write_transaction(engine, lambda c: store_events(c, [(item, outcome)]))
    return stored[(item.source, item.dedup_key)]


def record_run(
    engine: Engine, resource: str, kind: str, outcome: str | None, counts: dict[str, int],
    error: str | None = None,
) -> int:  # fmt: skip
    """A finished reconcile pass (or, with no outcome, one still running)."""

    def work(connection: Any) -> int:
        run = runs.start_or_resume(connection, resource, RunKind(kind))
        runs.record_progress(connection, run.id, counts, checkpoint=counts.get("pages"))
        if outcome is not None:
            runs.finish(connection, run.id, RunOutcome(outcome), {}, error)
        return run.id

    return write_transaction(engine, work)


def backdate_run(engine: Engine, run_id: int, started_at: datetime) -> None:
    # The only way to have a pass from the day before yesterday without waiting for it.
    write_transaction(
        engine,
        lambda c: c.execute(
            update(sync_runs)
            .where(sync_runs.c.id == run_id)
            .values(started_at=started_at, finished_at=started_at + timedelta(minutes=3))
        ),
    )


@dataclass
class KnownMirror:
    failed_seq: int
    pending_seq: int
    last_webhook_at: datetime
    run_ids: list[int]  # oldest first


@pytest.fixture
def known(engine: Engine) -> KnownMirror:
    """Patients 3 live + 1 deleted, appointments 1 + 1; 13 events, 11 of them in the last day."""
    recent = NOW - timedelta(minutes=10)
    ingest(
        engine,
        [
            incoming("patient.created", patient("PAT1"), recent),
            incoming("patient.created", patient("PAT2"), recent),
            incoming("patient.created", patient("PAT3"), recent),
            incoming("patient.deleted", {"patient_id": "PAT3"}, recent,
                     timestamp="2024-01-13T00:00:00Z"),
            incoming("appointment.created", appointment("APT1"), recent),
            incoming("appointment.created", appointment("APT2"), recent),
            incoming("appointment.deleted", {"appointment_id": "APT2"}, recent,
                     timestamp="2024-01-13T00:00:00Z"),
            incoming("appointment.confirmed", {"appointment_id": "APT1"},
                     NOW - timedelta(minutes=5), timestamp="2024-01-13T00:00:00Z"),
            incoming("invoice.paid", {"id": "INV1"}, recent),
        ],
    )  # fmt: skip
    # A reconcile's healed change is newer than every webhook: it is not "the last webhook".
    ingest(
        engine, [incoming("patient.created", patient("PAT4"), NOW, source=EventSource.RECONCILE)]
    )
    pending_seq = store(
        engine,
        incoming("patient.updated", patient("PAT1"), NOW - timedelta(hours=1)),
        Outcome(EventStatus.PENDING),
    )
    # Older than a day: in the totals and the unapplied list, not in the last day's counts.
    failed_seq = store(
        engine,
        incoming("patient.updated", patient("PAT2"), NOW - timedelta(days=3)),
        Outcome(EventStatus.FAILED, error="apply failed: TypeError"),
    )
    ingest(
        engine,
        [
            incoming("patient.updated", patient("PAT1"), NOW - timedelta(days=2),
                     timestamp="2024-01-01T00:00:00Z"),
        ],
    )  # fmt: skip

    old = record_run(engine, "patient", "full", RunOutcome.SUCCESS, {"pages": 3, "created": 7})
    backdate_run(engine, old, NOW - timedelta(days=2))
    healed = record_run(
        engine, "patient", "full", RunOutcome.SUCCESS,
        {"pages": 5, "records": 420, "created": 2, "updated": 1, "tombstoned": 1,
         "rate_limited": 3},
    )  # fmt: skip
    cut_short = record_run(
        engine, "appointment", "full", RunOutcome.INCOMPLETE,
        {"pages": 2, "records": 200, "created": 1},
        error="HealthDock answered 503 on page 3 after 6 attempts",
    )  # fmt: skip
    running = record_run(engine, "appointment", "upcoming", None, {"pages": 1, "records": 12})
    return KnownMirror(
        failed_seq=failed_seq,
        pending_seq=pending_seq,
        last_webhook_at=NOW - timedelta(minutes=5),
        run_ids=[old, healed, cut_short, running],
    )


def invoke(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(
        main, ["status", *args], env={"HEALTHDOCK_DATABASE_URL": database_url}
    )


def status_json(database_url: str, *args: str) -> dict[str, Any]:
    result = invoke(database_url, "--json", *args)
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def line_with(output: str, text: str) -> str:
    """The one table row of ``output`` that contains ``text``."""
    [line] = [line for line in output.splitlines() if text in line and "│" in line]
    return line


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("│")[1:-1]]


def assert_no_patient_data(output: str) -> None:
    for value in (*PATIENT_NAME, PATIENT_PHONE, PATIENT_DOB, PATIENT_ABHA):
        assert value not in output


def test_json_reports_the_exact_facts(database_url: str, known: KnownMirror) -> None:
    document = status_json(database_url, "--runs", "3")

    assert document["counts"] == {
        "patients": {"live": 3, "deleted": 1},
        "appointments": {"live": 1, "deleted": 1},
        "webhook_events": 13,
        "sync_runs": 4,
    }
    last_day = document["last_day"]
    assert last_day["events_by_status"] == {"applied": 9, "ignored": 1, "failed": 0, "pending": 1}
    assert last_day["events_by_source"] == {"webhook": 10, "reconcile": 1, "replay": 0}
    assert last_day["events_by_type"] == {
        "appointment.confirmed": 1,
        "appointment.created": 2,
        "appointment.deleted": 1,
        "invoice.paid": 1,
        "patient.created": 4,
        "patient.deleted": 1,
        "patient.updated": 1,
    }
    # The pass from two days ago (7 created) is outside the window.
    assert last_day["healed"] == {
        "runs": 3, "created": 3, "updated": 1, "tombstoned": 1, "rate_limited": 3,
    }  # fmt: skip

    unapplied = document["unapplied"]
    assert (unapplied["pending"], unapplied["failed"]) == (1, 1)
    oldest = unapplied["oldest"]
    assert oldest["age_seconds"] >= timedelta(days=3).total_seconds()
    assert {k: v for k, v in oldest.items() if k != "age_seconds"} == {
        "seq": known.failed_seq,
        "source": "webhook",
        "event_type": "patient.updated",
        "status": "failed",
        "received_at": iso(NOW - timedelta(days=3)),
        "attempts": 1,
        "error": "apply failed: TypeError",
    }
    assert document["last_webhook"]["received_at"] == iso(known.last_webhook_at)
    assert document["last_webhook"]["age_seconds"] >= 300

    shown = [
        {k: run[k] for k in ("id", "resource", "kind", "outcome", "pages", "records", "created",
                             "updated", "tombstoned", "rate_limited", "error")}
        for run in document["runs"]
    ]  # fmt: skip
    _, healed, cut_short, running = known.run_ids
    assert shown == [
        {"id": running, "resource": "appointment", "kind": "upcoming", "outcome": "running",
         "pages": 1, "records": 12, "created": 0, "updated": 0, "tombstoned": 0,
         "rate_limited": 0, "error": None},
        {"id": cut_short, "resource": "appointment", "kind": "full", "outcome": "incomplete",
         "pages": 2, "records": 200, "created": 1, "updated": 0, "tombstoned": 0,
         "rate_limited": 0, "error": "HealthDock answered 503 on page 3 after 6 attempts"},
        {"id": healed, "resource": "patient", "kind": "full", "outcome": "success",
         "pages": 5, "records": 420, "created": 2, "updated": 1, "tombstoned": 1,
         "rate_limited": 3, "error": None},
    ]  # fmt: skip
    assert document["runs"][0]["duration_seconds"] is None
    assert document["runs"][0]["finished_at"] is None
    for run in document["runs"][1:]:
        assert run["duration_seconds"] >= 0
        started = datetime.fromisoformat(run["started_at"])
        assert started.tzinfo is not None
        assert NOW - timedelta(minutes=5) < started
    assert_no_patient_data(json.dumps(document))


def test_tables_show_the_same_facts(database_url: str, known: KnownMirror) -> None:
    result = invoke(database_url)
    assert result.exit_code == 0, result.output
    output = result.stdout
    for heading in (
        "mirror",
        "events received in the last 24 h",
        "webhook loss",
        "last 4 sync runs",
        "event log",
        "429s",
        "tombstoned",
    ):
        assert heading in output
    assert cells(line_with(output, "│ patients"))[1:4] == ["3", "1", "4"]
    assert cells(line_with(output, "│ appointments"))[1:4] == ["1", "1", "2"]
    assert cells(line_with(output, "│ webhook_events"))[-1] == "13"
    assert cells(line_with(output, "│ webhook "))[1:3] == ["webhook", "10"]
    assert cells(line_with(output, "│ reconcile "))[1:3] == ["reconcile", "1"]
    # Healed in the last day: passes, created, updated, tombstoned, 429s.
    assert ["3", "3", "1", "1", "3"] in [cells(line) for line in output.splitlines()]
    running = cells(line_with(output, "upcoming"))
    assert running[:3] == [str(known.run_ids[-1]), "appointment", "upcoming"]
    assert running[4:6] == ["running", "running"]
    cut_short = known.run_ids[2]
    assert (
        f"run {cut_short} (appointment, incomplete): "
        "HealthDock answered 503 on page 3 after 6 attempts"
    ) in output
    oldest = cells(line_with(output, "oldest unapplied"))[1]
    assert oldest.startswith(
        f"seq {known.failed_seq} patient.updated (webhook, failed, 1 attempts)"
    )
    assert cells(line_with(output, "its error")) == ["its error", "apply failed: TypeError"]
    assert "3d 00h ago" in output
    assert "invoice.paid" in output
    assert_no_patient_data(result.output)


def test_runs_option_limits_the_runs_shown(database_url: str, engine: Engine) -> None:
    ids = [
        record_run(engine, "patient", "full", RunOutcome.SUCCESS, {"pages": 1}) for _ in range(12)
    ]
    assert [run["id"] for run in status_json(database_url)["runs"]] == ids[::-1][:10]
    assert status_json(database_url, "--runs", "0")["runs"] == []
    assert status_json(database_url)["last_day"]["healed"]["runs"] == 12


def test_an_empty_mirror_says_never_and_none(database_url: str, engine: Engine) -> None:
    document = status_json(database_url)
    assert document["counts"] == {
        "patients": {"live": 0, "deleted": 0},
        "appointments": {"live": 0, "deleted": 0},
        "webhook_events": 0,
        "sync_runs": 0,
    }
    assert document["last_day"]["events_by_status"] == {
        "applied": 0, "ignored": 0, "failed": 0, "pending": 0,
    }  # fmt: skip
    assert document["last_day"]["events_by_type"] == {}
    assert document["last_day"]["healed"] == {
        "runs": 0, "created": 0, "updated": 0, "tombstoned": 0, "rate_limited": 0,
    }  # fmt: skip
    assert document["unapplied"] == {"pending": 0, "failed": 0, "oldest": None}
    assert document["last_webhook"] == {"received_at": None, "age_seconds": None}
    assert document["runs"] == []

    result = invoke(database_url)
    assert result.exit_code == 0, result.output
    assert "sync runs: never" in result.stdout
    assert cells(line_with(result.stdout, "last webhook")) == ["last webhook", "never"]
    assert cells(line_with(result.stdout, "oldest unapplied")) == ["oldest unapplied", "none"]


def test_event_types_are_shown_verbatim(database_url: str, engine: Engine) -> None:
    # An unknown type is whatever a signed body said; it must not be read as rich markup.
    ingest(
        engine, [incoming("[/bold]odd", {"id": "X1"}, NOW), incoming("[red]x", {"id": "X2"}, NOW)]
    )
    result = invoke(database_url)
    assert result.exit_code == 0, result.output
    assert cells(line_with(result.stdout, "[/bold]odd")) == ["type", "[/bold]odd", "1"]
    assert cells(line_with(result.stdout, "[red]x")) == ["type", "[red]x", "1"]


def test_a_schema_that_is_not_current(database_url: str) -> None:
    if database_url.startswith("sqlite:///"):
        # An existing mirror file from before a migration (a missing file is refused).
        sqlite3.connect(database_url.removeprefix("sqlite:///")).close()
    result = invoke(database_url, "--json")
    # A read command never writes: not even the migration `serve` would make of a SQLite file.
    assert result.exit_code != 0
    assert "run `healthdock-mirror migrate` first" in result.output
    assert result.stdout == ""
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as connection:
            assert connection.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_an_unreachable_database_is_one_clear_line() -> None:
    result = CliRunner().invoke(
        main,
        ["status"],
        env={
            "HEALTHDOCK_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x",
            "HEALTHDOCK_DATABASE_TIMEOUT_SECONDS": "1",
        },
    )
    assert result.exit_code != 0
    [line] = result.output.strip().splitlines()
    assert "HEALTHDOCK_DATABASE_URL: cannot reach the database" in line


_AGES = st.integers(min_value=0, max_value=2 * 86400)


@settings(max_examples=20)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from([EventSource.WEBHOOK, EventSource.RECONCILE]),
            st.sampled_from(["applied", "ignored", "failed", "pending"]),
            st.sampled_from(["patient.created", "appointment.updated", "lab.result"]),
            _AGES,
        ),
        max_size=12,
    )
)
def test_last_day_counts_exactly_the_events_of_the_last_day(
    events: list[tuple[str, str, str, int]],
) -> None:
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as directory:
        engine = create_mirror_engine(f"sqlite:///{Path(directory) / 'mirror.db'}")
        try:
            upgrade(engine)
            for number, (source, state, event_type, age) in enumerate(events):
                data = {"id": f"REC{number}"}
                item = incoming(event_type, data, now - timedelta(seconds=age), source=source)
                store(engine, item, Outcome(state))
            status = gather_status(engine, now=now)
        finally:
            engine.dispose()
    recent = [(source, state, kind) for source, state, kind, age in events if age <= 86400]
    assert sum(status.events_by_status.values()) == len(recent)
    for source in (EventSource.WEBHOOK, EventSource.RECONCILE):
        assert status.events_by_source[source] == sum(1 for s, _, _ in recent if s == source)
    for state in ("applied", "ignored", "failed", "pending"):
        assert status.events_by_status[state] == sum(1 for _, s, _ in recent if s == state)
    assert status.events_by_type == {
        kind: sum(1 for _, _, k in recent if k == kind) for kind in sorted({k for *_, k in recent})
    }
    assert status.webhook_events == len(events)
    assert status.unapplied == {
        state: sum(1 for _, s, _, _ in events if s == state) for state in ("pending", "failed")
    }
    webhook_ages = [age for source, *_, age in events if source == EventSource.WEBHOOK]
    expected_last = now - timedelta(seconds=min(webhook_ages)) if webhook_ages else None
    assert status.last_webhook_at == expected_last


def test_a_backfill_is_not_counted_as_webhook_loss(engine: Engine) -> None:
    """The first complete pass brings the initial copy: only later passes' heals are loss."""
    record_run(engine, "patient", "backfill", RunOutcome.SUCCESS, {"pages": 20, "created": 1990})
    record_run(engine, "patient", "full", RunOutcome.SUCCESS, {"pages": 20, "created": 4,
                                                               "updated": 2})  # fmt: skip
    healed = gather_status(engine).healed
    assert (healed.created, healed.updated, healed.tombstoned) == (4, 2, 0)
