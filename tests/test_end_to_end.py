"""The whole product on loopback: the fake HealthDock, the receiver and the reconciler."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
from click.testing import CliRunner
from sqlalchemy import select

from fake_healthdock import FakeHealthDock, WebhookSwitches, serve_in_thread
from healthdock_mirror.cli import main
from mirror.database import create_mirror_engine
from mirror.migrate import upgrade
from mirror.schema import patients, sync_runs, webhook_events
from tests.factories import SECRET
from tests.support.waiting import wait_until_ready
from tests.test_cli import _free_port

API_KEY = "e2e-key"


def _env(database_url: str, api_url: str, **extra: str) -> dict[str, str]:
    return {
        "HEALTHDOCK_DATABASE_URL": database_url,
        "HEALTHDOCK_API_URL": api_url,
        "HEALTHDOCK_API_KEY": API_KEY,
        "HEALTHDOCK_WEBHOOK_SECRET": SECRET.decode(),
        **extra,
    }


def _live_patients(database_url: str) -> dict[str, dict[str, Any]]:
    engine = create_mirror_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(patients.c.id, patients.c.raw).where(patients.c.deleted_at.is_(None))
        ).all()
    engine.dispose()
    return {r.id: {k: v for k, v in r.raw.items() if k not in ("id", "patient_id")} for r in rows}


def _truth(fake: FakeHealthDock) -> dict[str, dict[str, Any]]:
    return {
        p.id: {k: v for k, v in msgspec.to_builtins(p).items() if k != "id"}
        for p in fake.patients()
    }


def test_sync_command_mirrors_the_fake_and_reports(database_url: str) -> None:
    fake = FakeHealthDock(seed=5, patients=150, api_key=API_KEY, rate_limit=None)
    with serve_in_thread(fake) as base_url:
        env = _env(database_url, f"{base_url}/v1")
        assert CliRunner().invoke(main, ["migrate"], env=env).exit_code == 0
        result = CliRunner().invoke(main, ["sync", "patients"], env=env)
    assert result.exit_code == 0, result.output
    assert "success" in result.output
    assert "reconcile" in result.output
    assert _live_patients(database_url) == _truth(fake)


def test_sync_command_fails_loudly_when_healthdock_refuses(database_url: str) -> None:
    fake = FakeHealthDock(seed=5, patients=10, api_key="another-key", rate_limit=None)
    with serve_in_thread(fake) as base_url:
        env = _env(database_url, f"{base_url}/v1")
        CliRunner().invoke(main, ["migrate"], env=env)
        result = CliRunner().invoke(main, ["sync", "patients"], env=env)
    assert result.exit_code == 1
    assert "incomplete" in result.output
    assert "401" in result.output
    engine = create_mirror_engine(database_url)
    with engine.connect() as connection:
        assert connection.execute(select(sync_runs.c.outcome)).scalar_one() == "incomplete"
    engine.dispose()


def test_lost_duplicated_and_reordered_webhooks_are_healed_by_the_next_reconcile(
    tmp_path: Path,
) -> None:
    database_url = f"sqlite:///{tmp_path / 'mirror.db'}"
    upgrade(create_mirror_engine(database_url))
    port = _free_port()
    fake = FakeHealthDock(
        seed=9, patients=100, api_key=API_KEY, rate_limit=None,
        webhook_url=f"http://127.0.0.1:{port}/webhooks/healthdock", webhook_secret=SECRET,
        webhook_switches=WebhookSwitches(drop_rate=0.3, duplicate_rate=0.3, reorder=5),
    )  # fmt: skip
    receiver = subprocess.Popen(
        [sys.executable, "-m", "healthdock_mirror", "serve", "--no-scheduler", "--port", str(port)],
        env={**os.environ, **_env(database_url, "http://unused.invalid/v1")},
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/readyz", 30)
        with serve_in_thread(fake) as base_url:
            env = _env(database_url, f"{base_url}/v1")
            # Start from a mirror equal to HealthDock, then let changes arrive by webhook only.
            assert CliRunner().invoke(main, ["sync", "patients"], env=env).exit_code == 0

            async def changes() -> None:
                fake.mutate(40)
                await fake.webhooks.drain(within=30)

            asyncio.run(changes())
            stats = fake.webhooks.stats
            assert stats.dropped > 0
            assert stats.duplicated > 0
            # Webhooks alone left the mirror behind: some were lost.
            assert _live_patients(database_url) != _truth(fake)
            healed = CliRunner().invoke(main, ["sync", "patients"], env=env)
            assert healed.exit_code == 0, healed.output
        assert _live_patients(database_url) == _truth(fake)
        engine = create_mirror_engine(database_url)
        with engine.connect() as connection:
            sources = set(connection.execute(select(webhook_events.c.source)).scalars())
        engine.dispose()
        assert sources == {"webhook", "reconcile"}
    finally:
        receiver.terminate()
        receiver.wait(timeout=20)
