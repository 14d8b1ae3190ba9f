"""Security: secrets are never logged or echoed, tokens guard what they should, the defaults
refuse everyone, the mirror's file is private, and the suite-wide check for patient data in
logs works (it is tests/conftest.py's autouse ``no_patient_data_logged``)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st
from litestar.testing import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import make_url

from config import Settings, SettingsError, load_settings
from fake_healthdock import FakeHealthDock, serve_in_thread
from fake_healthdock import create_app as create_fake_app
from healthdock_mirror import cli
from healthdock_mirror.demo import demo_settings
from mirror.events import Resource
from mirror.schema import patients, webhook_events
from receiver import create_app
from receiver.signature import sign
from sync import PassOptions, reconcile
from sync.client import HealthDockClient, UpstreamError
from tests.factories import (
    PATIENT_ABHA,
    PATIENT_DOB,
    PATIENT_NAME,
    PATIENT_PHONE,
    SECRET,
    encode,
    event,
    patient,
)
from tests.support.patient_data import PatientDataCatcher, patient_data_in, record_text

ROOT = Path(__file__).resolve().parents[1]
WEBHOOK_SECRET = "whsec-rotating-4c1d9e7a"
OLD_WEBHOOK_SECRET = "whsec-old-88b02f6e"
ADMIN_TOKEN = "admin-token-5f3e0b2a9c"
API_KEY = "hd-api-key-a71c44e0d2"
DATABASE_PASSWORD = "pg-passw0rd-93e1"
SECRETS = (WEBHOOK_SECRET, OLD_WEBHOOK_SECRET, ADMIN_TOKEN, API_KEY, DATABASE_PASSWORD)


def secrets_in(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def with_password(database_url: str) -> str:
    """The URL with a password added (PostgreSQL; the test server trusts local connections,
    so it is sent and ignored). SQLite URLs have no password: unchanged."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return database_url
    return url.set(password=DATABASE_PASSWORD).render_as_string(hide_password=False)


def secret_settings(database_url: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        webhook_secret=f"{WEBHOOK_SECRET},{OLD_WEBHOOK_SECRET}",  # type: ignore[arg-type]
        admin_token=ADMIN_TOKEN,  # type: ignore[arg-type]
        api_key=API_KEY,  # type: ignore[arg-type]
        database_timeout_seconds=2.0,
    )


def secret_env(database_url: str) -> dict[str, str]:
    return {
        "HEALTHDOCK_DATABASE_URL": with_password(database_url),
        "HEALTHDOCK_WEBHOOK_SECRET": f"{WEBHOOK_SECRET},{OLD_WEBHOOK_SECRET}",
        "HEALTHDOCK_ADMIN_TOKEN": ADMIN_TOKEN,
        "HEALTHDOCK_API_KEY": API_KEY,
        "HEALTHDOCK_LOG_LEVEL": "DEBUG",
    }


@pytest.fixture
def everything_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record at DEBUG, the HTTP client's included (the command line quiets it)."""
    with caplog.at_level(logging.DEBUG):
        # Not sqlalchemy: it logs SQL parameters when its own logger is told to, and nothing
        # of ours does (SQLAlchemy keeps it at WARNING whatever the root logger's level).
        for name in ("httpx", "httpcore", "aiohttp", "uvicorn", "litestar"):
            caplog.set_level(logging.DEBUG, logger=name)
        yield caplog


# The suite-wide check for patient data in logs, and proof that it can fail.


@given(lead=st.integers(6, 9), number=st.integers(0, 10**9 - 1), form=st.sampled_from("+ -"))
def test_generated_phone_numbers_are_found(lead: int, number: int, form: str) -> None:
    phone = {
        "+": f"+91{lead}{number:09d}",
        " ": f"+91 {lead}{number:09d}",
        "-": f"91-{lead}{number:09d}",
    }[form]
    assert patient_data_in(f"patient updated: phone={phone}, seq 12")


@given(abha=st.integers(10**13, 10**14 - 1))
def test_generated_abha_numbers_are_found(abha: int) -> None:
    digits = str(abha)
    grouped = f"{digits[:2]}-{digits[2:6]}-{digits[6:10]}-{digits[10:]}"
    assert patient_data_in(f'{{"abha_number": "{digits}"}}')
    assert patient_data_in(f"ABHA {grouped} linked")


def test_the_factories_patient_values_are_found() -> None:
    for value in (*PATIENT_NAME, PATIENT_PHONE, PATIENT_DOB, PATIENT_ABHA):
        assert patient_data_in(f"... {value} ...")


@given(content=st.binary(), number=st.integers(0, 10**13 - 1))
def test_what_log_lines_do_carry_is_not_taken_for_patient_data(content: bytes, number: int) -> None:
    line = (
        f"patient.updated seq {number} PAT{number % 10**6:06d} APT000001 evt_000042 "
        f"at 2024-01-12T10:30:00.123456789Z ({number} ms) "
        f"sha256={hashlib.sha256(content).hexdigest()} "
        f"run 7 pages 3 127.0.0.1:8080 +0530"
    )
    assert patient_data_in(line) == []


def test_the_log_check_catches_a_planted_line(no_patient_data_logged: PatientDataCatcher) -> None:
    logging.getLogger("sync.client").debug("confirming patient %s", PATIENT_PHONE)
    logging.getLogger("mirror.records").warning("write failed", extra={"row": {"dob": PATIENT_DOB}})
    try:
        raise ValueError(f"bad abha {PATIENT_ABHA}")
    except ValueError:
        logging.getLogger("receiver.webhooks").exception("could not apply seq 3")
    caught = list(no_patient_data_logged.found)
    no_patient_data_logged.found.clear()  # planted on purpose: this test itself passes
    assert len(caught) == 3, caught
    assert "DEBUG sync.client" in caught[0]


def test_record_text_is_what_a_handler_could_write() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s %d", ("a", 2), None)
    record.extra_field = "kept"
    assert record_text(record) == "a 2\n'kept'"


def test_a_test_that_logs_or_prints_patient_data_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check as the suite runs it, in a pytest of its own: tests that log patient data
    at any level, or print it from a subprocess, fail; a clean one passes."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest(
        "from tests.conftest import no_patient_data_logged, pytest_runtest_makereport  # noqa"
    )
    pytester.makepyfile(
        f"""
        import logging, subprocess, sys

        quiet = logging.getLogger("quiet")
        quiet.propagate = False
        loud = logging.getLogger("loud.library")
        loud.setLevel(logging.WARNING)  # as a library, or an earlier test, may leave it

        def test_logs_a_phone_at_debug():
            logging.getLogger("some.library").debug("calling +91{9876543210}")

        def test_logs_a_birth_date_at_debug_on_a_logger_set_higher():
            loud.debug("born {PATIENT_DOB}")

        def test_logs_a_name_on_a_logger_that_does_not_propagate():
            quiet.error("patient {PATIENT_NAME[1]} not found")

        def test_a_subprocess_prints_an_abha_number():
            subprocess.run([sys.executable, "-c", "print('abha 12345678901234')"], check=True)

        def test_clean():
            logging.getLogger("receiver").warning("seq 4 patient.updated applied")
            print("run 3: 12 pages")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    capsys.readouterr()  # pytester echoes the inner run's report, planted values and all
    # A record is found when the test's teardown looks (an error after the test passed); what
    # was printed, when its phase's report is made (a failure).
    result.assert_outcomes(passed=4, failed=1, errors=3)
    result.stdout.fnmatch_lines(["*patient data was printed (call)*12345678901234*"])
    result.stdout.fnmatch_lines(["*patient data was logged*", "*DEBUG some.library*"])
    result.stdout.fnmatch_lines(["*patient data was logged*", "*DEBUG loud.library*"])
    result.stdout.fnmatch_lines(["*patient data was logged*", "*ERROR quiet*Raghunathan*"])


# Secrets: never logged, never echoed.


def test_secrets_are_not_logged_at_debug_nor_echoed_in_answers(
    database_url: str,
    engine: Engine,
    everything_logged: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    answers: list[httpx.Response] = []
    settings = secret_settings(database_url)
    with TestClient(create_app(settings)) as client:
        body = encode(event("patient.created", patient()))
        good = {"X-HealthDock-Signature": sign(body, WEBHOOK_SECRET.encode())}
        answers.append(client.post("/webhooks/healthdock", content=body, headers=good))
        wrong = {"X-HealthDock-Signature": sign(body, b"guess")}
        refused = client.post("/webhooks/healthdock", content=body, headers=wrong)
        answers += [refused, client.post("/webhooks/healthdock", content=body)]
        bad = b'{"event": "patient.created"'
        bad_headers = {"X-HealthDock-Signature": sign(bad, OLD_WEBHOOK_SECRET.encode())}
        answers.append(client.post("/webhooks/healthdock", content=bad, headers=bad_headers))
        for token in ("", "wrong-guess", ADMIN_TOKEN + "x", ADMIN_TOKEN):
            headers = {"Authorization": f"Bearer {token}"}
            answers.append(client.get("/events", headers=headers))
        answers += [client.get(path) for path in ("/metrics", "/readyz", "/schema/openapi.json")]
    # The signed but unreadable body is HealthDock's: kept as failed, answered 200.
    assert [a.status_code for a in answers[:4]] == [200, 401, 401, 200]
    assert answers[3].json()["data"]["status"] == "failed"
    assert [a.status_code for a in answers[4:8]] == [401, 401, 401, 200]
    # The refusal does not tell the signature it expected (anyone could then sign that body).
    assert sign(body, WEBHOOK_SECRET.encode()).split("=", 1)[1] not in refused.text
    assert "wrong-guess" not in answers[5].text  # a presented token is not echoed either

    fake = FakeHealthDock(seed=2, patients=30, api_key=API_KEY, rate_limit=None)

    async def reconcile_then_use_a_wrong_key(api_url: str) -> str:
        async with HealthDockClient(api_url, API_KEY) as api:
            await reconcile(engine, api, Resource.PATIENT, PassOptions())
        async with HealthDockClient(api_url, API_KEY[::-1]) as api:
            with pytest.raises(UpstreamError) as refused_key:
                await api.page(Resource.PATIENT, 1)
        return str(refused_key.value)

    # On a real socket, with every logger at DEBUG: the reconciler's connections are
    # aiohttp's, which log nothing of a request; httpx's client lines are the test client's.
    with serve_in_thread(fake) as base_url:
        refusal = asyncio.run(reconcile_then_use_a_wrong_key(f"{base_url}/v1"))
    assert "401" in refusal
    assert API_KEY[::-1] not in refusal

    logged = "\n".join(record_text(record) for record in everything_logged.records)
    assert any(r.name == "httpx" for r in everything_logged.records)
    printed = capfd.readouterr()
    for text in (logged, printed.out, printed.err, *(a.text for a in answers)):
        assert secrets_in(text) == []


def test_status_and_replay_show_no_secret_and_no_patient_data(
    database_url: str, engine: Engine
) -> None:
    with TestClient(create_app(secret_settings(database_url))) as client:
        for number in range(3):
            body = encode(event("patient.updated", patient(f"PAT{number}")))
            headers = {"X-HealthDock-Signature": sign(body, WEBHOOK_SECRET.encode())}
            assert client.post("/webhooks/healthdock", content=body, headers=headers).is_success
    fake = FakeHealthDock(seed=2, patients=5, api_key="another-key", rate_limit=None)

    async def refused_reconcile() -> None:
        transport = httpx.ASGITransport(app=create_fake_app(fake))
        async with HealthDockClient("http://hd.test/v1", API_KEY, transport=transport) as api:
            await reconcile(engine, api, Resource.PATIENT, PassOptions())

    asyncio.run(refused_reconcile())  # a run whose error the status shows
    with engine.begin() as connection:
        connection.execute(patients.delete())  # a mirror restored from an old backup
    outputs = [
        invoke(database_url, "status"),
        invoke(database_url, "status", "--json"),
        invoke(database_url, "replay", "--all", "--dry-run"),
        invoke(database_url, "replay", "--all"),
    ]
    assert [result.exit_code for result in outputs] == [0, 0, 0, 0], outputs[0].output
    assert "HealthDock answered 401" in outputs[0].output
    # Replay names the fields it would set, never their values.
    assert "created  fields: " in outputs[2].output
    assert "first_name" in outputs[2].output
    for result in outputs:
        assert secrets_in(result.output) == []
        assert patient_data_in(result.output) == []


def invoke(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(cli.main, list(args), env=secret_env(database_url))


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://mirror:{DATABASE_PASSWORD}@db/mirror",
        f"postgresql://mirror:{DATABASE_PASSWORD}@db:fivefourthreetwo/mirror",
        f"postgresql:mirror:{DATABASE_PASSWORD}@db/mirror",
    ],
)
def test_a_bad_database_url_is_named_without_its_password(url: str) -> None:
    with pytest.raises(SettingsError, match="HEALTHDOCK_DATABASE_URL") as raised:
        load_settings(_env_file=None, database_url=url)
    assert DATABASE_PASSWORD not in str(raised.value)
    # Built directly, the validation error does not quote the value either.
    with pytest.raises(ValueError, match="database_url") as direct:
        Settings(_env_file=None, database_url=url)  # type: ignore[call-arg]
    assert DATABASE_PASSWORD not in str(direct.value)
    result = CliRunner().invoke(cli.main, ["status"], env={"HEALTHDOCK_DATABASE_URL": url})
    assert result.exit_code == 1
    assert "HEALTHDOCK_DATABASE_URL" in result.output
    assert DATABASE_PASSWORD not in result.output
    assert not isinstance(result.exception, ValueError | SettingsError)  # no traceback


def test_a_bad_setting_beside_secrets_names_only_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in secret_env("sqlite:///m.db").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HEALTHDOCK_PORT", "eighty")
    with pytest.raises(SettingsError) as raised:
        load_settings(_env_file=None)
    assert str(raised.value).startswith("HEALTHDOCK_PORT:")
    assert secrets_in(str(raised.value)) == []


def test_an_unreachable_database_is_named_without_its_password() -> None:
    url = f"postgresql://mirror:{DATABASE_PASSWORD}@127.0.0.1:1/mirror"
    env = {"HEALTHDOCK_DATABASE_URL": url, "HEALTHDOCK_DATABASE_TIMEOUT_SECONDS": "1"}
    result = CliRunner().invoke(cli.main, ["status"], env=env)
    assert result.exit_code == 1
    assert "HEALTHDOCK_DATABASE_URL: cannot reach the database" in result.output
    assert DATABASE_PASSWORD not in result.output


def test_printed_settings_mask_the_database_password() -> None:
    url = f"postgresql://mirror:{DATABASE_PASSWORD}@db/mirror"
    settings = load_settings(_env_file=None, database_url=url, api_key=API_KEY)
    shown = repr(settings) + str(settings) + settings.database_url_shown
    assert secrets_in(shown) == []
    assert "postgresql://mirror:***@db/mirror" in shown
    assert settings.database_url == url  # what the engine gets is untouched


def test_the_demo_does_not_echo_the_database_password(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    served: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: served.append(app))
    env = {"HEALTHDOCK_DATABASE_URL": with_password(postgres_url)}
    assert CliRunner().invoke(cli.main, ["migrate"], env=env).exit_code == 0
    result = CliRunner().invoke(cli.main, ["demo"], env=env)
    assert result.exit_code == 0, result.output
    assert served  # it got as far as serving
    assert "mirror at postgresql" in result.output
    assert DATABASE_PASSWORD not in result.output


# Tokens and signatures guard what they should.


@pytest.mark.parametrize(
    "authorization",
    ["Bearer " + "a" * 10_000, "Bearer t\u00f6k\u00e9n", f"Bearer {ADMIN_TOKEN}\u00e9", "bearer"],
)
def test_odd_admin_tokens_are_refused_with_401_not_an_error(
    database_url: str, engine: Engine, authorization: str
) -> None:
    with TestClient(create_app(secret_settings(database_url))) as client:
        headers = {b"authorization": authorization.encode("utf-8")}  # as sent: UTF-8 bytes
        response = client.get("/events", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHORIZED"


@pytest.mark.parametrize("configured", ["", " , ,", None])
def test_without_a_webhook_secret_every_webhook_is_refused(
    database_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch, configured: str | None
) -> None:
    if configured is None:
        monkeypatch.delenv("HEALTHDOCK_WEBHOOK_SECRET", raising=False)
    else:
        monkeypatch.setenv("HEALTHDOCK_WEBHOOK_SECRET", configured)
    settings = load_settings(_env_file=None, database_url=database_url)
    assert settings.webhook_secrets == ()
    body = encode(event("patient.created", patient()))
    with TestClient(create_app(settings)) as client:
        for key in (b"", b" ", SECRET, b"secret", b"changeme"):
            headers = {"X-HealthDock-Signature": sign(body, key)}
            assert (
                client.post("/webhooks/healthdock", content=body, headers=headers).status_code
                == 401
            )
        embedded = json.dumps({**json.loads(body), "signature": sign(body, b"")})
        assert client.post("/webhooks/healthdock", content=embedded).status_code == 401
    with engine.connect() as connection:
        assert (
            connection.execute(select(func.count()).select_from(webhook_events)).scalar_one() == 0
        )


def test_no_secret_has_a_default() -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert defaults.webhook_secret == ()
    assert defaults.admin_token is None
    assert defaults.api_key is None
    assert defaults.host == "127.0.0.1"
    assert make_url(defaults.database_url).password is None


def test_the_demos_secrets_exist_only_in_the_demo() -> None:
    first = demo_settings(load_settings(_env_file=None))
    second = demo_settings(load_settings(_env_file=None))
    # A fresh random webhook secret each time: nobody can know it in advance.
    assert first.webhook_secrets != second.webhook_secrets
    assert len(first.webhook_secrets[0]) >= 32
    assert load_settings(_env_file=None).api_key is None
    # The demo's fixed API key (for its own fake HealthDock) appears in no other module.
    demo_key = first.api_key.get_secret_value() if first.api_key else ""
    for package in ("config", "mirror", "receiver", "sync", "healthdock_mirror"):
        for source in (ROOT / package).rglob("*.py"):
            if source.name != "demo.py":
                assert demo_key not in source.read_text(), source


# The mirror's file holds patient data: readable by its owner only.


# Every form of SQLite URL a hospital may write; {dir} is the working directory.
SQLITE_URL_FORMS = [
    "sqlite:///{dir}/mirror.db",
    "sqlite:///mirror.db",
    "sqlite:///file:{dir}/mirror.db?uri=true",
    "sqlite:///file:mirror.db?uri=true",
    "sqlite:///file://localhost{dir}/mirror.db?uri=true&cache=private",
]


def assert_private(directory: Path) -> None:
    database = directory / "mirror.db"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    for companion in directory.glob("mirror.db-*"):  # -wal and -shm take the database's mode
        assert stat.S_IMODE(companion.stat().st_mode) == 0o600, companion


@pytest.mark.parametrize("form", SQLITE_URL_FORMS)
def test_a_new_sqlite_mirror_is_private_to_its_owner(usual_umask: Path, form: str) -> None:
    env = {"HEALTHDOCK_DATABASE_URL": form.format(dir=usual_umask)}
    result = CliRunner().invoke(cli.main, ["migrate"], env=env)
    assert result.exit_code == 0, result.output
    assert_private(usual_umask)


@pytest.mark.parametrize("form", SQLITE_URL_FORMS[::2])
def test_alembic_upgrade_head_creates_a_private_mirror(
    usual_umask: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """Plain `alembic upgrade head`, through alembic.ini, as an operator may run it."""
    from alembic.config import main as alembic

    monkeypatch.setenv("HEALTHDOCK_DATABASE_URL", form.format(dir=usual_umask))
    monkeypatch.chdir(ROOT)  # alembic.ini names migrations/ relative to it
    alembic(argv=["-c", str(ROOT / "alembic.ini"), "upgrade", "head"])
    assert_private(usual_umask)


def test_an_existing_sqlite_mirror_keeps_the_mode_its_operator_gave(tmp_path: Path) -> None:
    database = tmp_path / "shared.db"
    database.touch()
    database.chmod(0o640)  # analysts' group may read
    env = {"HEALTHDOCK_DATABASE_URL": f"sqlite:///{database}"}
    assert CliRunner().invoke(cli.main, ["migrate"], env=env).exit_code == 0
    assert stat.S_IMODE(database.stat().st_mode) == 0o640


def test_serve_binds_to_loopback_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    bound: list[str] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: bound.append(options["host"]))
    monkeypatch.chdir(tmp_path)  # no .env
    env = {"HEALTHDOCK_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "HEALTHDOCK_HOST": None}
    for args in (["serve", "--no-scheduler"], ["serve", "--no-scheduler", "--host", "0.0.0.0"]):
        result = CliRunner().invoke(cli.main, args, env=env)
        assert result.exit_code == 0, result.output
    assert bound == ["127.0.0.1", "0.0.0.0"]
