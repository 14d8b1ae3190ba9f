"""The command line as an operator uses it, on a real port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from click.testing import CliRunner
from sqlalchemy import select

from healthdock_mirror.cli import main
from mirror.database import create_mirror_engine
from mirror.migrate import is_current
from mirror.schema import patients
from tests.factories import SECRET, encode, event, patient, signed
from tests.support.waiting import wait_until_ready


def test_migrate_is_idempotent(database_url: str, monkeypatch: object) -> None:
    runner = CliRunner()
    env = {"HEALTHDOCK_DATABASE_URL": database_url}
    first = runner.invoke(main, ["migrate"], env=env)
    assert first.exit_code == 0, first.output
    assert "was empty" in first.output
    second = runner.invoke(main, ["migrate"], env=env)
    assert "already current" in second.output
    assert is_current(create_mirror_engine(database_url))


def test_bad_setting_fails_with_its_name() -> None:
    result = CliRunner().invoke(main, ["migrate"], env={"HEALTHDOCK_DATABASE_URL": "mysql://x"})
    assert result.exit_code != 0
    assert "HEALTHDOCK_DATABASE_URL: unknown driver 'mysql'" in result.output


def test_unreachable_database_is_named() -> None:
    result = CliRunner().invoke(
        main,
        ["migrate"],
        env={
            "HEALTHDOCK_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x",
            "HEALTHDOCK_DATABASE_TIMEOUT_SECONDS": "1",
        },
    )
    assert result.exit_code != 0
    assert "HEALTHDOCK_DATABASE_URL: cannot reach the database" in result.output


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_on_a_fresh_sqlite_file_migrates_and_receives(tmp_path: Path) -> None:
    port = _free_port()
    database = tmp_path / "fresh.db"
    env = {
        **os.environ,
        "HEALTHDOCK_DATABASE_URL": f"sqlite:///{database}",
        "HEALTHDOCK_WEBHOOK_SECRET": SECRET.decode(),
        "HEALTHDOCK_PORT": str(port),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "healthdock_mirror", "serve"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/readyz", 20)
        body = encode(event("patient.created", patient("PAT42")))
        response = httpx.post(
            f"http://127.0.0.1:{port}/webhooks/healthdock", content=body, headers=signed(body)
        )
        assert response.status_code == 200
    finally:
        server.terminate()
        output = server.communicate(timeout=20)[0].decode()
    assert "migrated the SQLite mirror" in output
    engine = create_mirror_engine(f"sqlite:///{database}")
    with engine.connect() as connection:
        assert connection.execute(select(patients.c.id)).scalars().all() == ["PAT42"]
    engine.dispose()


def test_serve_refuses_an_unmigrated_postgres(postgres_url: str) -> None:
    result = CliRunner().invoke(main, ["serve"], env={"HEALTHDOCK_DATABASE_URL": postgres_url})
    assert result.exit_code != 0
    assert "run `healthdock-mirror migrate` first" in result.output


def test_commands_start_without_loading_alembic_or_the_scheduler() -> None:
    # Every command checks the schema at start-up; only `migrate` needs Alembic for it, and
    # only `serve` and `worker` a scheduler: the others do not pay for importing them.
    probe = (
        "import sys, healthdock_mirror.cli; "
        "print(sorted({'alembic', 'apscheduler'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)  # fmt: skip
    assert result.stdout.strip() == "[]"
