"""No patient data (names, phone numbers, dates of birth, ABHA numbers) in any log line."""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from litestar.testing import TestClient
from sqlalchemy import Engine, select

from config import SettingsError, load_settings
from fake_healthdock import FakeHealthDock, serve_in_thread
from mirror.database import create_mirror_engine
from mirror.migrate import upgrade
from mirror.schema import patients
from receiver import create_app
from tests.conftest import make_settings
from tests.factories import (
    PATIENT_ABHA,
    PATIENT_DOB,
    PATIENT_NAME,
    PATIENT_PHONE,
    SECRET,
    encode,
    event,
    patient,
    signed,
)
from tests.support.patient_data import PATIENT_VALUES, patient_data_in
from tests.support.services import serve
from tests.support.waiting import wait_until_ready
from tests.test_cli import _free_port

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


def _json_lines(text: str) -> list[dict[str, object]]:
    """Every log line as an object; a line that is not JSON fails the test."""
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    for line in lines:
        assert {"timestamp", "level", "logger", "message"} <= line.keys(), line
    return lines


def test_json_logs_at_debug_carry_no_patient_data(database_url: str, tmp_path: Path) -> None:
    """A webhook POST to `serve` and a `sync`, each its own process configured as a hospital
    would run it: JSON lines at DEBUG. Neither may log the patient it handled."""
    upgrade(create_mirror_engine(database_url))
    fake = FakeHealthDock(
        seed=3, patients=0, appointments_per_patient=0, api_key="log-key", rate_limit=None
    )
    fake.create_patient(
        {"first_name": PATIENT_NAME[0], "last_name": PATIENT_NAME[1], "gender": "M",
         "date_of_birth": PATIENT_DOB, "phone": PATIENT_PHONE, "abha_number": PATIENT_ABHA}
    )  # fmt: skip
    port = _free_port()
    with serve_in_thread(fake) as base_url:
        env = {
            **os.environ,
            "HEALTHDOCK_DATABASE_URL": database_url,
            "HEALTHDOCK_WEBHOOK_SECRET": SECRET.decode(),
            "HEALTHDOCK_API_URL": f"{base_url}/v1",
            "HEALTHDOCK_API_KEY": "log-key",
            "HEALTHDOCK_LOG_FORMAT": "json",
            "HEALTHDOCK_LOG_LEVEL": "DEBUG",
        }
        serve_log = tmp_path / "serve.log"
        with serve_log.open("wb") as log_file:
            receiver = subprocess.Popen(
                [sys.executable, "-m", "healthdock_mirror", "serve", "--no-scheduler",
                 "--port", str(port)],
                env=env, cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                wait_until_ready(f"http://127.0.0.1:{port}/readyz")
                url = f"http://127.0.0.1:{port}/webhooks/healthdock"
                good = encode(event("patient.created", patient("PAT777")))
                assert httpx.post(url, content=good, headers=signed(good)).status_code == 200
                assert httpx.post(url, content=good, headers=signed(good)).status_code == 200
                assert httpx.post(url, content=good, headers=signed(b"x")).status_code == 401
                bad = good.replace(b'"2024-01-12T10:30:00Z"', f'"{PATIENT_DOB}"'.encode())
                # Signed, so HealthDock's: stored as failed, not refused (SPEC.md).
                assert httpx.post(url, content=bad, headers=signed(bad)).status_code == 200
                assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
            finally:
                receiver.terminate()
                receiver.wait(timeout=20)
        # The reconcile heals the patient the webhooks never brought and tombstones PAT777,
        # which HealthDock does not have: listing, confirming by id, writing.
        reconcile = subprocess.run(
            [sys.executable, "-m", "healthdock_mirror", "sync", "patients"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert reconcile.returncode == 0, reconcile.stderr
    served = serve_log.read_text()
    # Everything `serve` wrote is a JSON log line; `sync` also draws its progress bar.
    assert all(line.startswith("{") for line in served.splitlines() if line.strip()), served
    assert any(line["logger"] == "uvicorn.error" for line in _json_lines(served))
    assert _json_lines(reconcile.stderr)
    with create_mirror_engine(database_url).connect() as connection:
        mirrored = connection.execute(
            select(patients.c.first_name).where(patients.c.deleted_at.is_(None))
        ).scalars()
        assert list(mirrored) == [PATIENT_NAME[0]]  # the data did pass through both processes
    for text in (served, reconcile.stdout, reconcile.stderr):
        for value in FORBIDDEN:
            assert value not in text


def test_log_format_setting_is_validated() -> None:
    assert load_settings(_env_file=None, log_format="JSON").log_format == "json"
    assert load_settings(_env_file=None).log_format == "text"
    with pytest.raises(SettingsError, match="HEALTHDOCK_LOG_FORMAT: use text or json"):
        load_settings(_env_file=None, log_format="xml")


# A receiver at DEBUG: every logger of the process, nothing secret.

ADMIN_TOKEN = "debug-admin-token-4b1f9e2a7c"


def _raw_request(base_url: str, head: str) -> bytes:
    """Send ``head`` as it is (httpx would not send an Upgrade request as plain HTTP) and
    read until the receiver closes the connection."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_receiver_at_debug_logs_no_token_secret_or_patient_value(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    """`serve` at HEALTHDOCK_LOG_LEVEL=DEBUG. A WebSocket upgrade carrying the admin token
    (uvicorn's WebSocket path logged every header of it, at DEBUG), signed webhooks and admin
    reads: no output line holds the token, the webhook secret or a patient's value."""
    log = tmp_path / "serve.log"
    with serve(database_url, log, log_level="DEBUG", admin_token=ADMIN_TOKEN) as receiver:
        base = receiver.base_url
        upgrade_headers = (
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Authorization: Bearer {ADMIN_TOKEN}\r\n"
        )
        answer = _raw_request(base, f"GET /events HTTP/1.1\r\nHost: x\r\n{upgrade_headers}\r\n")
        assert not answer.startswith(b"HTTP/1.1 101 ")  # no WebSocket (test_server.py)
        created = encode(event("patient.created", patient("PAT900")))
        updated = encode(event("patient.updated", patient("PAT900"), "2024-02-01T00:00:00Z"))
        url = f"{base}/webhooks/healthdock"
        for body in (created, updated, created):
            assert httpx.post(url, content=body, headers=signed(body)).status_code == 200
        assert httpx.post(url, content=created, headers=signed(b"x")).status_code == 401
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        feed = httpx.get(f"{base}/events", headers=admin)
        assert feed.status_code == 200
        assert PATIENT_NAME[1] in feed.text  # the data did pass through the process
        assert httpx.get(f"{base}/events", headers={"Authorization": "Bearer no"}).is_error
        assert httpx.get(f"{base}/metrics").status_code == 200
    output = receiver.output()
    assert " DEBUG " in output  # the level was in force
    for value in (ADMIN_TOKEN, SECRET.decode(), *PATIENT_VALUES):
        assert value not in output, value
    assert patient_data_in(output) == []


# The committer: a process of its own, logging as configured.

# The database refuses every patient row: a batch fails to apply, and the committer says so.
_REFUSE_PATIENTS = {
    "sqlite": [
        "CREATE TRIGGER refuse_patients BEFORE INSERT ON patients "
        "BEGIN SELECT RAISE(ABORT, 'patients are refused'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_patients() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'patients are refused' USING ERRCODE = 'check_violation'; "
        "END $$",
        "CREATE TRIGGER refuse_patients BEFORE INSERT ON patients "
        "FOR EACH ROW EXECUTE FUNCTION refuse_patients()",
    ],
}


@pytest.mark.parametrize("level", ["INFO", "WARNING"])
def test_the_committers_lines_follow_the_log_format_and_level(
    database_url: str, engine: Engine, tmp_path: Path, level: str
) -> None:
    """The committer (receiver/committer.py) runs in a child process, which the command
    line's logging setup does not reach: its lines are JSON lines too, at the level set."""
    with engine.begin() as connection:
        for statement in _REFUSE_PATIENTS[engine.dialect.name]:
            connection.exec_driver_sql(statement)
    log = tmp_path / "serve.log"
    with serve(database_url, log, log_format="json", log_level=level) as receiver:
        body = encode(event("patient.created", patient()))
        answer = httpx.post(
            f"{receiver.base_url}/webhooks/healthdock", content=body, headers=signed(body)
        )
        assert answer.status_code == 200
        assert answer.json()["data"]["status"] == "failed"  # stored, for a later replay
    output = receiver.output()
    assert all(line.startswith("{") for line in output.splitlines() if line.strip()), output
    lines = _json_lines(output)
    # Only the committer applies events: mirror.ingest speaks from its process alone.
    failed = [line for line in lines if line["logger"] == "mirror.ingest"]
    assert [line["level"] for line in failed] == ["ERROR"], output
    assert str(failed[0]["message"]).startswith("applying 1 events failed with ")
    started = [line for line in lines if line["logger"] == "receiver.committer"]
    assert [line["level"] for line in started] == (["INFO"] if level == "INFO" else []), output
