"""Real databases for every test: a SQLite file always, PostgreSQL when
``HEALTHDOCK_TEST_POSTGRES_URL`` is set (``.ci/run`` sets it and fails if it is unreachable)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from urllib.parse import quote

import hypothesis
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import Engine, create_engine, text

from config import Settings
from mirror.database import create_mirror_engine
from mirror.migrate import upgrade
from receiver import create_app
from tests.factories import SECRET
from tests.support.patient_data import PatientDataCatcher, catching_patient_data, patient_data_in

POSTGRES_URL = os.environ.get("HEALTHDOCK_TEST_POSTGRES_URL")
# Set by .ci/run: every skip (no PostgreSQL, no chattr for the read-only file tests) fails.
NO_SKIPS = os.environ.get("HEALTHDOCK_TEST_NO_SKIPS") == "1"

pytest_plugins = ["pytester"]  # tests/test_security.py shows the patient-data check failing

# Property tests check behaviour, not speed: no per-example deadline (CI machines are loaded).
hypothesis.settings.register_profile("healthdock", deadline=None)
hypothesis.settings.load_profile("healthdock")

BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not POSTGRES_URL, reason="HEALTHDOCK_TEST_POSTGRES_URL is not set (CI always sets it)"
        ),
    ),
]


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL whose connections see only a new, empty PostgreSQL schema (dropped afterwards)."""
    assert POSTGRES_URL is not None
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind: a new SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mirror.db'}"
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """An empty PostgreSQL schema, for scenarios that only PostgreSQL has."""
    if not POSTGRES_URL:
        pytest.skip("HEALTHDOCK_TEST_POSTGRES_URL is not set (CI always sets it)")
    with postgres_schema() as url:
        yield url


def make_settings(database_url: str, **overrides: object) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        webhook_secret=(SECRET.decode(),),  # type: ignore[arg-type]
        **{"database_timeout_seconds": 2.0, **overrides},  # type: ignore[arg-type]
    )


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A migrated mirror database."""
    mirror_engine = create_mirror_engine(database_url, timeout_seconds=2.0)
    upgrade(mirror_engine)
    yield mirror_engine
    mirror_engine.dispose()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
def client(settings: Settings, engine: Engine) -> Iterator[TestClient[Litestar]]:
    """The receiver on a migrated database, through its real lifespan."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(autouse=True)
def no_patient_data_logged() -> Iterator[PatientDataCatcher]:
    """No patient data in any log line at any level, in any test: every record is searched
    (tests/support/patient_data.py), and a test that logged any fails."""
    with catching_patient_data() as catcher:
        yield catcher
    if catcher.found:
        pytest.fail("patient data was logged:\n" + "\n".join(catcher.found), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """What a test printed, its subprocesses included (pytest captures file descriptors 1 and
    2, which they inherit), is searched for patient data too, each phase on its own."""
    report = yield
    if report.skipped and NO_SKIPS and not hasattr(report, "wasxfail"):
        # CI (.ci/run) runs everything: a skip there is a missing capability, not a pass.
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {report.longrepr}"
    if report.passed:
        printed = "".join(
            content
            for name, content in report.sections
            if name in (f"Captured stdout {report.when}", f"Captured stderr {report.when}")
        )
        found = patient_data_in(printed)
        if found:
            report.outcome = "failed"
            report.longrepr = f"patient data was printed ({report.when}): {', '.join(found)}"
    return report


@pytest.fixture
def usual_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """In ``tmp_path``, under the usual umask: files readable by every local user."""
    monkeypatch.chdir(tmp_path)
    previous = os.umask(0o022)
    try:
        yield tmp_path
    finally:
        os.umask(previous)
