"""``healthdock-mirror oauth login|status|logout`` end to end, on loopback: the fake HealthDock
serves its authorization server in this process; the test plays the browser by following the
URL the login prints; the callback reaches the login's own listener, or a running receiver."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from fake_healthdock import FakeHealthDock, serve_in_thread
from tests.support.access import audit_rows
from tests.support.oauth import CLIENT_ID, SECRET_KEY, TOKEN_PREFIXES, oauth_client
from tests.support.services import COMMAND, environment, free_port, service


@dataclass
class HealthDock:
    fake: FakeHealthDock
    url: str


@pytest.fixture
def healthdock() -> Iterator[HealthDock]:
    callback_port = free_port()
    redirect = f"http://127.0.0.1:{callback_port}/oauth/callback"
    fake = FakeHealthDock(
        seed=5, patients=120, appointments_per_patient=1.0, api_key="the-hospital-key",
        rate_limit=None, oauth_clients=[oauth_client(redirect)],
    )  # fmt: skip
    with serve_in_thread(fake) as url:
        yield HealthDock(fake, url)


def _redirect(healthdock: HealthDock) -> str:
    return healthdock.fake.oauth.clients[CLIENT_ID].redirect_uris[0]


def _env(database_url: str, healthdock: HealthDock, **settings: object) -> dict[str, str]:
    base = healthdock.url
    options: dict[str, object] = {
        "api_url": f"{base}/v1", "api_auth": "oauth", "oauth_client_id": CLIENT_ID,
        "secret_key": SECRET_KEY, "oauth_authorize_url": f"{base}/oauth/authorize",
        "oauth_token_url": f"{base}/oauth/token", "oauth_revocation_url": f"{base}/oauth/revoke",
        "oauth_redirect_uri": _redirect(healthdock), "log_level": "DEBUG",
    }  # fmt: skip
    options.update(settings)
    env = environment(database_url, **options)
    migrated = _run(env, "migrate")  # PostgreSQL is never migrated behind the operator's back
    assert migrated.returncode == 0, migrated.stderr
    return env


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@contextlib.contextmanager
def _login(env: dict[str, str], *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A running ``oauth login`` and the URL it printed (checked to be alone on its line)."""
    login = subprocess.Popen(
        [*COMMAND, "oauth", "login", *args], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert login.stdout is not None
        line = login.stdout.readline()
        if not line:
            assert login.stderr is not None
            pytest.fail(f"the login printed no URL: {login.stderr.read()}")
        url = line.rstrip("\n")
        assert url.startswith("http"), line
        assert " " not in url
        yield login, url
    finally:
        if login.poll() is None:
            login.kill()
        login.wait(timeout=30)


def _follow(url: str) -> httpx.Response:
    """What a browser does: HealthDock approves and redirects; the browser goes there."""
    approved = httpx.get(url)
    assert approved.status_code == 302, approved.text
    return httpx.get(approved.headers["location"])


def _finish(login: subprocess.Popen[str]) -> tuple[int, str]:
    """Its exit code and everything else it wrote (standard output holds the URL alone)."""
    rest, errors = login.communicate(timeout=60)
    assert rest == ""
    return login.returncode, errors


def _no_tokens(*texts: str) -> None:
    for text in texts:
        for prefix in TOKEN_PREFIXES:
            assert prefix not in text


def test_login_then_reconcile_then_logout(
    database_url: str, healthdock: HealthDock, tmp_path: Path
) -> None:
    env = _env(database_url, healthdock)
    with _login(env) as (login, url):
        query = parse_qs(urlsplit(url).query)
        assert query["code_challenge_method"] == ["S256"]
        assert query["client_id"] == [CLIENT_ID]
        assert query["redirect_uri"] == [_redirect(healthdock)]
        assert len(query["state"][0]) >= 32
        page = _follow(url)
        assert page.status_code == 200
        assert "Authorized" in page.text
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["referrer-policy"] == "no-referrer"
        code, login_log = _finish(login)
    assert code == 0, login_log
    assert f"authorized: client {CLIENT_ID}" in login_log
    assert "listening on 127.0.0.1" in login_log

    shown = _run(env, "oauth", "status")
    assert shown.returncode == 0, shown.stderr
    assert f"client:         {CLIENT_ID}" in shown.stdout
    assert "state:          active" in shown.stdout
    assert "refresh token:  held" in shown.stdout
    as_json = _run(env, "oauth", "status", "--json")
    document = json.loads(as_json.stdout)
    assert document["grant"]["scope"] == "patients:read appointments:read"
    assert document["grant"]["authorized_by"].startswith("cli")

    synced = _run(env, "sync", "patients")
    assert synced.returncode == 0, synced.stderr
    assert healthdock.fake.stats.unauthorized == 0
    status = _run(env, "status")
    _no_tokens(login_log, shown.stdout, shown.stderr, as_json.stdout, synced.stdout,
               synced.stderr, status.stdout, status.stderr)  # fmt: skip

    out = _run(env, "oauth", "logout")
    assert out.returncode == 0, out.stderr
    # The refresh token's whole grant, its access token with it (RFC 7009 2.1).
    assert healthdock.fake.oauth.stats.revocations == 1
    assert _run(env, "oauth", "status").returncode == 1
    assert _run(env, "sync", "patients").returncode == 1
    actions = [(row["action"], row["outcome"]) for row in audit_rows(database_url)]
    assert ("oauth.login", "ok") in actions
    assert ("oauth.logout", "ok") in actions


def test_a_running_receiver_takes_the_callback(
    database_url: str, healthdock: HealthDock, tmp_path: Path
) -> None:
    port = urlsplit(_redirect(healthdock)).port
    env = _env(database_url, healthdock, log_level="INFO")
    receiver_env = {**env, "HEALTHDOCK_PORT": str(port)}
    # With the access log on: the callback's query (code and state) must not reach it.
    with service(["serve", "--no-scheduler", "--access-log"], receiver_env, tmp_path / "serve.log",
                 url=f"http://127.0.0.1:{port}") as receiver:  # fmt: skip
        with _login(env) as (login, url):
            callback = httpx.get(url).headers["location"]
            assert httpx.get(callback).status_code == 200
            code, login_log = _finish(login)
        assert code == 0, login_log
        assert f"the receiver on 127.0.0.1:{port} takes the callback" in login_log
        # The same callback again (the back button, or a replay): no login waits for it.
        replayed = httpx.get(callback)
        assert replayed.status_code == 400
        assert "No login is waiting" in replayed.text
        logged = receiver.output()
        assert "GET /oauth/callback?[redacted]" in logged
        _no_tokens(logged)
        assert parse_qs(urlsplit(callback).query)["state"][0] not in logged
    assert _run(env, "oauth", "status").returncode == 0


def test_a_forged_callback_is_refused_and_the_real_one_still_counts(
    database_url: str, healthdock: HealthDock
) -> None:
    env = _env(database_url, healthdock)
    with _login(env) as (login, url):
        forged = httpx.get(f"{_redirect(healthdock)}?{urlencode({'state': 'x' * 43, 'code': 'c'})}")
        assert forged.status_code == 400
        assert "No login is waiting" in forged.text
        approved = httpx.get(url)
        callback = approved.headers["location"]
        assert httpx.get(callback).status_code == 200
        code, login_log = _finish(login)
    assert code == 0, login_log


def test_a_callback_with_an_error_ends_the_login(database_url: str, healthdock: HealthDock) -> None:
    healthdock.fake.oauth.switches = healthdock.fake.oauth.switches.updated({"deny": True})
    env = _env(database_url, healthdock)
    with _login(env) as (login, url):
        page = _follow(url)
        assert page.status_code == 200
        assert "access_denied" in page.text
        code, login_log = _finish(login)
    assert code == 1
    assert "HealthDock did not authorize: access_denied" in login_log
    assert _run(env, "oauth", "status").returncode == 1
    assert ("oauth.login", "failed") in [
        (r["action"], r["outcome"]) for r in audit_rows(database_url)
    ]


def test_no_callback_ends_the_login_when_it_times_out(
    database_url: str, healthdock: HealthDock
) -> None:
    env = _env(database_url, healthdock)
    with _login(env, "--timeout", "1") as (login, _):
        code, login_log = _finish(login)
    assert code == 1
    assert "no callback from HealthDock within 1 s" in login_log


def test_the_secret_key_missing_or_wrong(database_url: str, healthdock: HealthDock) -> None:
    env = _env(database_url, healthdock)
    no_key = {k: v for k, v in env.items() if k != "HEALTHDOCK_SECRET_KEY"}
    refused = _run(no_key, "oauth", "login")
    assert refused.returncode == 1
    assert "HEALTHDOCK_SECRET_KEY: required when HEALTHDOCK_API_AUTH=oauth" in refused.stderr
    with _login(env) as (login, url):
        _follow(url)
        assert _finish(login)[0] == 0
    other_key = {**env, "HEALTHDOCK_SECRET_KEY": "another-secret-key-of-32-characters"}
    synced = _run(other_key, "sync", "patients")
    assert synced.returncode == 1
    assert "HEALTHDOCK_SECRET_KEY does not open the stored tokens" in synced.stderr
    assert "run healthdock-mirror oauth login again" in synced.stderr
    assert _run(other_key, "oauth", "status").returncode == 0  # no key needed to describe it


def test_a_worker_reconciles_on_the_grant(
    database_url: str, healthdock: HealthDock, tmp_path: Path
) -> None:
    """The scheduler runs in OAuth mode without an API key (serve's and worker's alike)."""
    env = _env(database_url, healthdock, log_level="INFO")
    with _login(env) as (login, url):
        _follow(url)
        assert _finish(login)[0] == 0
    with service(["worker"], env, tmp_path / "worker.log") as worker:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = json.loads(_run(env, "status", "--json").stdout)["runs"]
            if sum(run["outcome"] == "success" for run in runs) >= 2:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the worker reconciled nothing:\n" + worker.output()[-3000:])
        _no_tokens(worker.output())
    assert healthdock.fake.stats.unauthorized == 0


def test_a_callback_from_another_issuer_is_refused(
    database_url: str, healthdock: HealthDock
) -> None:
    """RFC 9207: the callback's iss must be the authorization server the login asked."""
    env = _env(database_url, healthdock, oauth_issuer="https://auth.other.example")
    with _login(env) as (login, url):
        assert _follow(url).status_code == 200
        code, login_log = _finish(login)
    assert code == 1
    assert "does not name the authorization server that was asked" in login_log
    assert healthdock.fake.oauth.stats.codes_exchanged == 0  # the code was never sent
