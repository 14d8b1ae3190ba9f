"""Real ways a database stops taking writes while the receiver runs, and comes back.

SQLite: the database's files become unwritable. Tests run as root here and in CI, and root
ignores permission bits, so the files are made immutable (``chattr +i``), which holds even
for root and even through descriptors opened before (as a file system remounted read-only
does). The ``-shm`` file is left alone: SQLite maps it into memory, and a write to an
immutable mapping kills the process with SIGBUS, which no read-only file system does.

PostgreSQL: the receiver connects as a role of its own whose new sessions can be made
read-only, as on a standby that the service's address points at during a failover.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from sqlalchemy import Engine, create_engine


def _chattr(flag: str, paths: list[Path]) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


def require_immutable_files(directory: Path) -> None:
    """Skip unless files in ``directory`` can be made immutable (root, a file system that
    supports it: both hold here and in CI)."""
    probe = directory / "immutable-probe"
    probe.write_text("")
    try:
        if shutil.which("chattr") is None:
            pytest.skip("chattr is not installed")
        _chattr("+i", [probe])
        _chattr("-i", [probe])
    except (subprocess.CalledProcessError, OSError):
        pytest.skip("cannot make files immutable here (needs root on ext4 or similar)")
    finally:
        probe.unlink()


def sqlite_files(database: Path) -> list[Path]:
    """The database file and its write-ahead log (those that exist)."""
    return [path for path in (database, Path(f"{database}-wal")) if path.exists()]


def make_unwritable(paths: list[Path]) -> None:
    """``paths`` can no longer be written, not even through descriptors already open."""
    _chattr("+i", paths)


def make_writable(paths: list[Path]) -> None:
    _chattr("-i", paths)


@contextlib.contextmanager
def unwritable(paths: list[Path]) -> Iterator[None]:
    make_unwritable(paths)
    try:
        yield
    finally:
        make_writable(paths)


@dataclass
class WriterRole:
    """A login role for the receiver in one test's PostgreSQL schema."""

    name: str
    url: str  # the schema's URL, connecting as this role
    _admin: Engine

    def read_only(self, on: bool) -> None:
        """New sessions of the role are read-only (``on``) or not; open ones keep theirs."""
        statement = (
            f'ALTER ROLE "{self.name}" SET default_transaction_read_only = on'
            if on
            else f'ALTER ROLE "{self.name}" RESET default_transaction_read_only'
        )
        with self._admin.begin() as connection:
            connection.exec_driver_sql(statement)


@contextlib.contextmanager
def writer_role(schema_url: str) -> Iterator[WriterRole]:
    """A new role with every right on the tables of ``schema_url``'s schema (migrated first)."""
    url = urlparse(schema_url)
    schema = parse_qs(url.query)["options"][0].removeprefix("-csearch_path=")
    name = f"r_{uuid.uuid4().hex[:12]}"
    admin = create_engine(schema_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE ROLE "{name}" LOGIN')
        connection.exec_driver_sql(f'GRANT ALL ON SCHEMA "{schema}" TO "{name}"')
        connection.exec_driver_sql(f'GRANT ALL ON ALL TABLES IN SCHEMA "{schema}" TO "{name}"')
        connection.exec_driver_sql(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{name}"')
    user = url.username or "postgres"
    role_url = schema_url.replace(f"//{user}@", f"//{name}@", 1)
    try:
        yield WriterRole(name, role_url, admin)
    finally:
        with admin.begin() as connection:
            # Its sessions must end before the role can go.
            connection.exec_driver_sql(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'"
            )
            connection.exec_driver_sql(f'DROP OWNED BY "{name}"')
            connection.exec_driver_sql(f'DROP ROLE "{name}"')
        admin.dispose()
