"""POST /webhooks/healthdock as HealthDock and attackers would call it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient, TestClient
from sqlalchemy import Engine, func, select

from config import Settings
from mirror.schema import appointments, patients, webhook_events
from receiver import create_app, sign
from tests.factories import SECRET, appointment, encode, event, patient, signed

URL = "/webhooks/healthdock"


def post(client: TestClient[Litestar], document: dict[str, Any] | bytes, **headers: str) -> Any:
    body = document if isinstance(document, bytes) else encode(document)
    return client.post(URL, content=body, headers={**signed(body), **headers})


def stored_events(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(webhook_events)).scalar_one()


def test_signed_event_is_acknowledged_stored_and_queryable(
    client: TestClient[Litestar], engine: Engine
) -> None:
    response = post(client, event("patient.created", patient("PAT123456")))
    assert response.status_code == 200
    assert response.json()["data"]["status"] == "applied"
    post(client, event("appointment.created", appointment("APT1", patient_id="PAT123456")))
    with engine.connect() as connection:
        # What an analyst would run.
        rows = connection.execute(
            select(patients.c.first_name, appointments.c.doctor_id, appointments.c.status)
            .join(appointments, appointments.c.patient_id == patients.c.id)
            .where(patients.c.deleted_at.is_(None))
        ).all()
    assert [tuple(row) for row in rows] == [("Aarav", "DOC01", "scheduled")]


def test_raw_body_and_headers_are_stored_verbatim(
    client: TestClient[Litestar], engine: Engine
) -> None:
    body = (
        b'{ "event" : "patient.created", "timestamp": "2024-01-12T10:30:00Z",\n'
        b' "data": {"patient_id": "P9"} }'
    )
    assert post(client, body, **{"X-Request-Id": "abc"}).status_code == 200
    with engine.connect() as connection:
        stored = connection.execute(select(webhook_events)).one()
    assert stored.body == body
    assert ["x-request-id", "abc"] in stored.headers
    assert stored.source == "webhook"


def test_compatibility_form_with_embedded_signature(
    client: TestClient[Litestar], engine: Engine
) -> None:
    document = event("patient.created", patient("PAT7"))
    canonical = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    body = json.dumps({**document, "signature": sign(canonical, SECRET)}, indent=2).encode()
    response = client.post(URL, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert stored_events(engine) == 1


def test_rotated_secrets_are_all_accepted(settings: Settings, engine: Engine) -> None:
    # As an operator writes it: HEALTHDOCK_WEBHOOK_SECRET=new-secret,test-secret
    rotating = Settings(
        _env_file=None,
        database_url=settings.database_url,  # type: ignore[call-arg]
        webhook_secret="new-secret, test-secret",
    )  # type: ignore[arg-type]
    with TestClient(create_app(rotating)) as client:
        for secret in (b"new-secret", SECRET):
            body = encode(event("patient.created", patient()))
            headers = {"X-HealthDock-Signature": sign(body, secret)}
            assert client.post(URL, content=body, headers=headers).status_code == 200
        body = encode(event("patient.created", patient()))
        headers = {"X-HealthDock-Signature": sign(body, b"retired")}
        assert client.post(URL, content=body, headers=headers).status_code == 401
    assert stored_events(engine) == 2


def test_unsigned_tampered_or_missing_signature_is_401_and_nothing_stored(
    client: TestClient[Litestar], engine: Engine
) -> None:
    body = encode(event("patient.created", patient()))
    tampered = body.replace(b"Aarav", b"Mallory")
    responses = [
        client.post(URL, content=body),
        client.post(URL, content=tampered, headers=signed(body)),
        client.post(URL, content=body, headers={"X-HealthDock-Signature": "sha256=zz"}),
        client.post(URL, content=body, headers={"X-HealthDock-Signature": ""}),
    ]
    for response in responses:
        assert response.status_code == 401
        assert response.json()["success"] is False
        assert response.json()["error"]["code"] == "INVALID_SIGNATURE"
    assert stored_events(engine) == 0


def test_redelivery_is_acknowledged_once(client: TestClient[Litestar], engine: Engine) -> None:
    document = event("patient.created", patient())
    first, second = post(client, document), post(client, document)
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["data"]["status"] == "duplicate"
    assert stored_events(engine) == 1


def test_unknown_event_type_is_acknowledged_and_ignored(
    client: TestClient[Litestar], engine: Engine
) -> None:
    response = post(client, event("doctor.created", {"doctor_id": "DOC9"}))
    assert response.status_code == 200
    assert response.json()["data"]["status"] == "ignored"
    assert stored_events(engine) == 1


def test_malformed_signed_bodies_are_stored_as_failed_never_refused(
    client: TestClient[Litestar], engine: Engine
) -> None:
    """HealthDock signed them: a 4xx would make it give up, so each is kept for an operator."""
    bodies: list[bytes] = [
        b"not json",
        b"",
        b"[]",
        b'"patient.created"',
        b"\xff\xfe\x00garbage",
        encode({"event": "patient.created", "timestamp": "2024-01-12T10:30:00Z"}),
        encode({"event": "patient.created", "timestamp": "yesterday", "data": patient()}),
        encode({"event": "patient.created", "timestamp": 1705055400, "data": patient()}),
        encode({"event": 7, "timestamp": "2024-01-12T10:30:00Z", "data": {}}),
        encode(event("patient.created", {"first_name": "no id"})),
        encode(event("patient.created", {"patient_id": {"nested": True}})),
        encode(event("appointment.created", {"appointment_id": "x" * 1000})),
        ("[" * 100_000 + "]" * 100_000).encode(),
    ]
    for body in bodies:
        response = post(client, body)
        assert response.status_code == 200, body[:60]
        assert response.json()["data"]["status"] == "failed", body[:60]
        # A redelivery of the same bytes is recognized by their digest.
        assert post(client, body).json()["data"]["status"] == "duplicate", body[:60]
    with engine.connect() as connection:
        rows = connection.execute(
            select(webhook_events.c.status, webhook_events.c.error, webhook_events.c.body)
        ).all()
    assert sorted(row.body for row in rows) == sorted(bodies)
    assert {row.status for row in rows} == {"failed"}
    assert all(row.error for row in rows)
    assert patient_rows(engine) == 0


def patient_rows(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(patients)).scalar_one()


def test_wrong_types_in_known_fields_are_kept_not_refused(
    client: TestClient[Litestar], engine: Engine
) -> None:
    odd = patient("PAT5", date_of_birth="15/06/1987", phone=9812345678, gender=["M"])
    assert post(client, event("patient.created", odd)).status_code == 200
    with engine.connect() as connection:
        row = connection.execute(select(patients)).one()
    assert row.date_of_birth is None
    assert row.gender is None
    assert row.phone == "9812345678"
    assert row.raw["date_of_birth"] == "15/06/1987"


def test_body_over_the_limit_is_413(settings: Settings, engine: Engine) -> None:
    small = settings.model_copy(update={"max_body_bytes": 2048})
    with TestClient(create_app(small)) as client:
        big = encode(event("patient.created", patient(notes="x" * 4096)))
        response = client.post(URL, content=big, headers=signed(big))
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        fits = encode(event("patient.created", patient()))
        assert client.post(URL, content=fits, headers=signed(fits)).status_code == 200
    assert stored_events(engine) == 1


def test_concurrent_events_are_all_committed(settings: Settings, engine: Engine) -> None:
    async def scenario() -> list[int]:
        async with AsyncTestClient(create_app(settings)) as client:
            bodies = [encode(event("patient.created", patient(f"PAT{i}"))) for i in range(60)]
            responses = await asyncio.gather(
                *(client.post(URL, content=body, headers=signed(body)) for body in bodies)
            )
            return [response.status_code for response in responses]

    assert asyncio.run(scenario()) == [200] * 60
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(patients)).scalar_one() == 60
    assert stored_events(engine) == 60


def test_health_readiness_and_openapi(client: TestClient[Litestar]) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    schema = client.get("/schema/openapi.json").json()
    assert "/webhooks/healthdock" in schema["paths"]
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"
    assert client.get(URL).status_code == 405
