"""The committer process: it owns the database writes, and its death loses nothing."""

from __future__ import annotations

import os
import signal
import time

from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import Engine, select

from mirror.schema import webhook_events
from tests.factories import encode, event, patient, signed


def send(client: TestClient[Litestar], record_id: str) -> int:
    body = encode(event("patient.created", patient(record_id)))
    return client.post("/webhooks/healthdock", content=body, headers=signed(body)).status_code


def test_a_killed_committer_is_replaced_and_nothing_acknowledged_is_lost(
    client: TestClient[Litestar], engine: Engine
) -> None:
    assert send(client, "before") == 200
    committer = client.app.state.intake._committer
    os.kill(committer._process.pid, signal.SIGKILL)
    committer._process.join(timeout=10)

    acknowledged = {"before"}
    deadline = time.monotonic() + 30
    statuses = []
    for i in range(20):
        status = send(client, f"after{i}")
        statuses.append(status)
        assert status in (200, 503)  # 503 only while the committer restarts; never a 500
        if status == 200:
            acknowledged.add(f"after{i}")
        assert time.monotonic() < deadline
    assert statuses[-1] == 200  # it came back without a restart of the receiver
    with engine.connect() as connection:
        stored = set(connection.execute(select(webhook_events.c.record_id)).scalars())
    assert acknowledged <= stored
