"""``healthdock-mirror replay`` and ``prune`` as an operator uses them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select, update

from healthdock_mirror.cli import main
from mirror.ingest import ingest
from mirror.schema import patients, webhook_events
from tests.factories import PATIENT_NAME, PATIENT_PHONE, TIMESTAMPS, event, patient
from tests.support.stored_events import (
    events_by_seq,
    fix_the_cause,
    incoming,
    mirror_contents,
    refuse_patient,
    table_contents,
)


def run(database_url: str, *args: str, **env: str) -> Result:
    return CliRunner().invoke(
        main, list(args), env={"HEALTHDOCK_DATABASE_URL": database_url, **env}
    )


def test_the_operator_replays_failed_events_after_fixing_the_cause(
    engine: Engine, database_url: str
) -> None:
    # Two events for one patient fail (the database refuses the row), others apply.
    refuse_patient(engine, "PAT9")
    ingest(
        engine,
        [
            incoming(event("patient.created", patient("PAT1"), TIMESTAMPS[0])),
            incoming(event("patient.created", patient("PAT9", phone="1"), TIMESTAMPS[0])),
        ],
    )
    ingest(engine, [incoming(event("patient.updated", patient("PAT9", phone="2"), TIMESTAMPS[4]))])
    failed = [seq for seq, row in events_by_seq(engine).items() if row.status == "failed"]
    assert len(failed) == 2
    fix_the_cause(engine)

    refused = run(database_url, "replay")
    assert refused.exit_code == 2
    assert "--all" in refused.output

    before = table_contents(engine)
    dry = run(database_url, "replay", "--status", "failed", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert table_contents(engine) == before
    lines = [line for line in dry.output.splitlines() if line.startswith("seq ")]
    assert lines[0].startswith(f"seq {failed[0]}  patient.created  patient/PAT9  failed -> created")
    assert "was: apply failed: " in lines[0]
    assert lines[1].startswith(f"seq {failed[1]}  patient.updated  patient/PAT9  failed -> updated")
    assert lines[1].split("  fields: ")[1].startswith("phone  ")  # the field's name only
    assert "dry run" in dry.output
    # Field names, never values.
    for value in (*PATIENT_NAME, PATIENT_PHONE):
        assert value not in dry.output

    real = run(database_url, "replay", "--status", "failed")
    assert real.exit_code == 0, real.output
    assert "created" in real.output
    rows = events_by_seq(engine)
    for seq in failed:
        assert (rows[seq].status, rows[seq].error, rows[seq].attempts) == ("applied", None, 2)
    with engine.connect() as connection:
        phone = connection.execute(select(patients.c.phone).where(patients.c.id == "PAT9"))
        assert phone.scalar_one() == "2"

    # Everything again: nothing in the mirror changes, every event comes out stale.
    mirror = mirror_contents(engine)
    again = run(database_url, "replay", "--all")
    assert again.exit_code == 0, again.output
    assert mirror_contents(engine) == mirror
    assert {row.effect for row in events_by_seq(engine).values()} == {"stale"}
    assert "stale" in again.output


def test_an_event_that_fails_again_makes_the_replay_fail(engine: Engine, database_url: str) -> None:
    refuse_patient(engine, "PAT9")
    ingest(engine, [incoming(event("patient.created", patient("PAT9")))])

    result = run(database_url, "replay", "--status", "failed")

    assert result.exit_code == 1
    assert "failed -> failed  error: apply failed: " in result.output
    [row] = events_by_seq(engine).values()
    assert (row.status, row.attempts) == ("failed", 2)


def test_replay_selects_by_time_type_source_and_id(engine: Engine, database_url: str) -> None:
    day = datetime(2024, 3, 1, tzinfo=UTC)
    ingest(
        engine,
        [
            incoming(event("patient.created", patient("A"), event_id="ev-a"), received_at=day),
            incoming(
                event("patient.deleted", {"patient_id": "A"}, event_id="ev-b"),
                received_at=day + timedelta(hours=2),
            ),
        ],
    )

    def selected(*args: str) -> list[str]:
        result = run(database_url, "replay", "--dry-run", *args)
        assert result.exit_code == 0, result.output
        return [line.split()[1] for line in result.output.splitlines() if line.startswith("seq ")]

    assert selected("--since", "2024-03-01T01:00:00Z") == ["2"]
    assert selected("--until", "2024-03-01T06:30:00+05:30") == ["1"]  # 01:00 UTC
    assert selected("--since", "2024-03-01", "--until", "2024-03-02") == ["1", "2"]
    assert selected("--type", "patient.deleted") == ["2"]
    assert selected("--source", "webhook", "--seq", "1") == ["1"]
    assert selected("--event-id", "ev-b", "--event-id", "ev-a") == ["1", "2"]
    assert selected("--source", "reconcile") == []

    bad = run(database_url, "replay", "--since", "last tuesday")
    assert bad.exit_code == 2
    assert "--since" in bad.output
    both = run(database_url, "replay", "--all", "--type", "patient.created")
    assert both.exit_code == 2


def test_prune_removes_old_payloads_and_replay_reports_them_skipped(
    engine: Engine, database_url: str
) -> None:
    ingest(engine, [incoming(event("patient.created", patient("OLD")))])
    ingest(engine, [incoming(event("patient.created", patient("NEW")))])
    long_ago = datetime.now(UTC) - timedelta(days=100)
    with engine.begin() as connection:
        connection.execute(
            update(webhook_events)
            .where(webhook_events.c.record_id == "OLD")
            .values(received_at=long_ago, applied_at=long_ago)
        )

    unset = run(database_url, "prune")
    assert unset.exit_code == 1
    assert "HEALTHDOCK_EVENT_RETENTION_DAYS" in unset.output

    pruned = run(database_url, "prune", HEALTHDOCK_EVENT_RETENTION_DAYS="90")
    assert pruned.exit_code == 0, pruned.output
    assert "removed the payloads of 1 applied events" in pruned.output

    result = run(database_url, "replay", "--all")
    assert result.exit_code == 0, result.output
    assert "patient/OLD  applied -> skipped" in result.output
    assert "payload removed by retention" in result.output


@pytest.mark.parametrize(
    "form",
    [
        "sqlite:///{path}",
        "sqlite:///file:{path}?uri=true",
        "sqlite:///file:{path}?uri=true&mode=ro",
    ],
)
@pytest.mark.parametrize("command", [["status"], ["replay", "--all", "--dry-run"], ["prune"]])
def test_commands_that_read_a_mirror_refuse_a_missing_sqlite_file(
    tmp_path: Path, command: list[str], form: str
) -> None:
    missing = tmp_path / "mirror-typo.db"
    env = {
        "HEALTHDOCK_DATABASE_URL": form.format(path=missing),
        "HEALTHDOCK_EVENT_RETENTION_DAYS": "7",
    }
    result = CliRunner().invoke(main, command, env=env)
    assert result.exit_code != 0
    assert "there is no SQLite mirror at" in result.output
    assert not missing.exists()
