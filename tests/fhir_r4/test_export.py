"""``healthdock-mirror export fhir``: bulk-data files of valid R4 resources, live records only,
``--since`` by when the mirror changed them, whole files, and on the audit trail."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.patient import Patient
from sqlalchemy import Engine

from healthdock_mirror.cli import main
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
    ]  # no partial file left behind
    assert "Patient.ndjson: 4 Patient" in result.stdout
    rows = audit_rows(database_url, "--action", "fhir.export")
    assert len(rows) == 1
    assert "every live record" in rows[0]["target"]


def test_since_takes_what_the_mirror_changed_after_the_instant(
    database_url: str, seeded: Engine, tmp_path: Path
) -> None:
    between = datetime.now(UTC) + timedelta(milliseconds=5)
    while datetime.now(UTC) <= between:
        pass  # mirrored_at of the next writes is after it
    changed = dict(PATIENTS[1], first_name="Ravindra")
    seed(seeded, [changed], [dict(APPOINTMENTS[0], status="confirmed")],
         timestamp="2026-03-12T00:00:00Z")  # fmt: skip
    result = export(database_url, str(tmp_path), "--since", between.isoformat())
    assert result.exit_code == 0, result.output
    assert [p["id"] for p in lines(tmp_path / "Patient.ndjson")] == ["PAT002"]
    assert [a["id"] for a in lines(tmp_path / "Appointment.ndjson")] == ["APT001"]


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
