"""``healthdock-mirror export fhir``: bulk-data files of valid R4 resources, live records only,
``--since`` by when the mirror changed them, whole files, and on the audit trail."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.patient import Patient
from sqlalchemy import Engine

from healthdock_mirror.cli import main
from mirror import Resource
from tests.fhir_r4.conftest import APPOINTMENTS, PATIENTS, seed
from tests.support.access import audit_rows


def export(database_url: str, *args: str) -> Any:
    env = {"HEALTHDOCK_DATABASE_URL": database_url}
    return CliRunner().invoke(main, ["export", "fhir", *args], env=env)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_live_record_is_one_valid_resource_a_line(
    database_url: str, seeded: Engine, tmp_path: Path
) -> None:
    result = export(database_url, str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    patients = lines(tmp_path / "out" / "Patient.ndjson")
    appointments = lines(tmp_path / "out" / "Appointment.ndjson")
    for resource in patients:
        Patient.model_validate(resource)
    for resource in appointments:
        Appointment.model_validate(resource)
    # Tombstoned (PAT005, APT005) and not a FHIR id (PAT_6): left out.
    assert [p["id"] for p in patients] == ["PAT001", "PAT002", "PAT003", "PAT004"]
    assert [a["id"] for a in appointments] == ["APT001", "APT002", "APT003", "APT004", "APT006"]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "Appointment.ndjson",
        "Patient.ndjson",
        "deleted.ndjson",
        "manifest.json",
    ]  # no staging directory left behind
    assert (tmp_path / "out" / "deleted.ndjson").read_text() == ""  # no --since: no deletions
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["output"] == [
        {"type": "Patient", "url": "Patient.ndjson", "count": 4},
        {"type": "Appointment", "url": "Appointment.ndjson", "count": 5},
    ]
    assert manifest["since"] is None
    assert "Patient.ndjson: 4 resources" in result.stdout
    assert f"next: --since {manifest['transactionTime'][:16]}" in result.stdout.replace(
        "+00:00", "Z"
    )
    rows = audit_rows(database_url, "--action", "fhir.export")
    assert len(rows) == 1
    assert "every live record" in rows[0]["target"]


def test_since_takes_changes_and_deletions_after_the_last_transaction_time(
    database_url: str, seeded: Engine, tmp_path: Path
) -> None:
    first = export(database_url, str(tmp_path / "first"))
    assert first.exit_code == 0, first.output
    # The next export starts from the first one's transactionTime: 5 minutes before it began.
    since = json.loads((tmp_path / "first" / "manifest.json").read_text())["transactionTime"]
    assert datetime.fromisoformat(since) < datetime.now(UTC) - timedelta(minutes=4)
    # So that only what changes now is newer than it, the seeded rows are made older.
    with seeded.begin() as connection:
        for table in ("patients", "appointments"):
            connection.exec_driver_sql(
                f"UPDATE {table} SET mirrored_at = ?" if seeded.dialect.name == "sqlite"
                else f"UPDATE {table} SET mirrored_at = %s",
                ((datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None).isoformat(" ")
                 if seeded.dialect.name == "sqlite" else datetime.now(UTC) - timedelta(hours=1),),
            )  # fmt: skip
    changed = dict(PATIENTS[1], first_name="Ravindra")
    seed(seeded, [changed], [dict(APPOINTMENTS[0], status="confirmed")],
         {Resource.APPOINTMENT: ["APT003"]}, timestamp="2026-03-12T00:00:00Z")  # fmt: skip
    result = export(database_url, str(tmp_path / "next"), "--since", since)
    assert result.exit_code == 0, result.output
    assert [p["id"] for p in lines(tmp_path / "next" / "Patient.ndjson")] == ["PAT002"]
    assert [a["id"] for a in lines(tmp_path / "next" / "Appointment.ndjson")] == ["APT001"]
    deleted = lines(tmp_path / "next" / "deleted.ndjson")
    for bundle in deleted:
        Bundle.model_validate(bundle)
    assert [b["entry"][0]["request"] for b in deleted] == [
        {"method": "DELETE", "url": "Appointment/APT003"}
    ]
    manifest = json.loads((tmp_path / "next" / "manifest.json").read_text())
    assert manifest["deleted"] == [{"type": "Bundle", "url": "deleted.ndjson", "count": 1}]


def test_an_export_replaces_the_files_of_an_earlier_one(
    database_url: str, seeded: Engine, tmp_path: Path
) -> None:
    assert export(database_url, str(tmp_path)).exit_code == 0
    seed(seeded, [{"id": "PAT008", "last_name": "New"}], [])
    assert export(database_url, str(tmp_path)).exit_code == 0
    assert len(lines(tmp_path / "Patient.ndjson")) == 5
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".export-")]


def test_bad_arguments_are_refused_clearly(
    database_url: str, seeded: Engine, tmp_path: Path
) -> None:
    bad_since = export(database_url, str(tmp_path), "--since", "last tuesday")
    assert bad_since.exit_code == 2
    assert "ISO 8601" in bad_since.output
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert export(database_url, str(a_file)).exit_code != 0
    missing = export(f"sqlite:///{tmp_path}/none.db", str(tmp_path / "x"))
    assert missing.exit_code == 1
    assert "no SQLite mirror" in missing.output
