"""No patient data (names, phone numbers, dates of birth, ABHA numbers) in any log line."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from litestar.testing import TestClient

from mirror.database import create_mirror_engine
from mirror.migrate import upgrade
from receiver import create_app
from tests.conftest import make_settings
from tests.factories import (
    PATIENT_ABHA,
    PATIENT_DOB,
    PATIENT_NAME,
    PATIENT_PHONE,
    encode,
    event,
    patient,
    signed,
)

FORBIDDEN = [*PATIENT_NAME, PATIENT_PHONE, PATIENT_DOB, PATIENT_ABHA]


def test_no_patient_data_in_logs_on_any_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(
        f"sqlite:///{tmp_path / 'm.db'}", database_timeout_seconds=0.2, max_body_bytes=4096
    )
    upgrade(create_mirror_engine(settings.database_url))
    good = encode(event("patient.created", patient()))
    with TestClient(create_app(settings)) as client:
        client.post("/webhooks/healthdock", content=good, headers=signed(good))  # applied
        client.post("/webhooks/healthdock", content=good, headers=signed(good))  # duplicate
        client.post("/webhooks/healthdock", content=good, headers=signed(b"x"))  # 401
        client.post("/webhooks/healthdock", content=good)  # no signature
        bad = good.replace(b'"2024-01-12T10:30:00Z"', f'"{PATIENT_DOB}"'.encode())
        client.post("/webhooks/healthdock", content=bad, headers=signed(bad))  # 400
        big = encode(event("patient.created", patient(notes=PATIENT_NAME[0] * 5000)))
        client.post("/webhooks/healthdock", content=big, headers=signed(big))  # 413
        holder = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        other = encode(event("patient.updated", patient(), "2024-02-01T00:00:00Z"))
        assert (
            client.post("/webhooks/healthdock", content=other, headers=signed(other)).status_code
            == 503
        )
        holder.execute("ROLLBACK")
    assert len(caplog.records) > 0  # the paths above do log; none of it may be patient data
    logged = "\n".join(record.getMessage() for record in caplog.records)
    logged += "\n".join(str(record.args) for record in caplog.records)
    captured = capfd.readouterr()
    for text in (logged, captured.out, captured.err):
        for value in FORBIDDEN:
            assert value not in text
