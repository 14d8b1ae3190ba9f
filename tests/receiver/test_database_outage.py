"""The database going away mid-run: 503 while it lasts (so HealthDock retries), then recovery."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import urlparse

from litestar.testing import TestClient
from sqlalchemy import func, select

from mirror.database import create_mirror_engine
from mirror.migrate import upgrade
from mirror.schema import webhook_events
from receiver import create_app
from tests.conftest import make_settings
from tests.factories import encode, event, patient, signed
from tests.support.network import DatabaseLink

URL = "/webhooks/healthdock"


def send(client: TestClient, record_id: str) -> int:  # type: ignore[type-arg]
    body = encode(event("patient.created", patient(record_id)))
    response = client.post(URL, content=body, headers=signed(body))
    if response.status_code != 200:
        assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert response.headers["retry-after"]
    return response.status_code


def test_sqlite_locked_gives_503_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "mirror.db"
    fast = make_settings(f"sqlite:///{path}", database_timeout_seconds=0.2)
    engine = create_mirror_engine(fast.database_url)
    upgrade(engine)
    with TestClient(create_app(fast)) as client:
        assert send(client, "before") == 200
        # Another process holds the write lock (an analyst's long write, a backup...).
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        assert send(client, "during") == 503
        assert client.get("/readyz").status_code == 503
        holder.execute("ROLLBACK")
        holder.close()
        assert send(client, "after") == 200
        assert send(client, "during") == 200  # the sender's retry lands
        assert client.get("/readyz").status_code == 200
    with engine.connect() as connection:
        ids = connection.execute(select(webhook_events.c.record_id)).scalars().all()
    assert sorted(ids) == ["after", "before", "during"]
    engine.dispose()


def test_postgres_unreachable_gives_503_then_recovers(postgres_url: str) -> None:
    database_url = postgres_url
    url = urlparse(database_url)
    with DatabaseLink(url.hostname or "127.0.0.1", url.port or 5432) as proxy:
        proxied_url = database_url.replace(f"{url.hostname}:{url.port}", f"127.0.0.1:{proxy.port}")
        proxied = make_settings(proxied_url, database_timeout_seconds=1.0)
        engine = create_mirror_engine(database_url)
        upgrade(engine)
        with TestClient(create_app(proxied)) as client:
            assert send(client, "before") == 200
            proxy.cut()
            assert [send(client, f"during{i}") for i in range(3)] == [503, 503, 503]
            assert client.get("/readyz").status_code == 503
            proxy.restore()
            assert send(client, "after") == 200  # no restart needed
            assert [send(client, f"during{i}") for i in range(3)] == [200, 200, 200]
        with engine.connect() as connection:
            count = connection.execute(
                select(func.count()).select_from(webhook_events)
            ).scalar_one()
        assert count == 5
        engine.dispose()
