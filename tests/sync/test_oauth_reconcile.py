"""Reconciling as a third-party application: the OAuth grant's refreshes, expiries and refusals,
against the fake HealthDock's authorization server, on both databases."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from fake_healthdock import FakeHealthDock, create_app
from fake_healthdock.clock import ManualClock
from mirror import (
    DatabaseUnavailable,
    GrantState,
    Resource,
    RunOutcome,
    Sealer,
    oauth,
    read_transaction,
    write_transaction,
)
from mirror.schema import sync_runs
from sync import run_reconcile
from sync.client import HealthDockClient
from sync.grant import OAuthGrant
from sync.job import pass_options
from sync.oauth import ClientRegistration, TokenEndpoint
from sync.reconcile import reconcile
from tests.support.oauth import (
    SECRET_KEY,
    TOKEN_PREFIXES,
    authorize,
    oauth_client,
    oauth_settings,
)
from tests.sync.conftest import mirror_of, truth_of

BOTH = [Resource.PATIENT, Resource.APPOINTMENT]


def _fake(patients: int = 180, **options: Any) -> FakeHealthDock:
    return FakeHealthDock(
        seed=11, patients=patients, appointments_per_patient=1.0, api_key="the-hospital-key",
        rate_limit=None, oauth_clients=[oauth_client()], **options,
    )  # fmt: skip


class ExpiringAfter:
    """An ASGI layer: after ``requests`` API requests, every live access token expires (as if
    HealthDock revoked them, or its clock ran ahead of ours)."""

    def __init__(self, app: Any, fake: FakeHealthDock, requests: int) -> None:
        self.app, self.fake, self.left = app, fake, requests
        self.expired = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            self.left -= 1
            if self.left == 0:
                self.expired += self.fake.oauth.expire_access_tokens()
        await self.app(scope, receive, send)


def _grant(engine: Engine) -> oauth.GrantInfo:
    info = read_transaction(engine, oauth.grant_info)
    assert info is not None
    return info


def _stored_tokens(engine: Engine) -> oauth.OAuthTokens:
    loaded = read_transaction(
        engine, functools.partial(oauth.load_tokens, sealer=Sealer(SECRET_KEY))
    )
    assert loaded is not None
    return loaded[1]


def test_a_reconcile_runs_on_the_oauth_grant(database_url: str, engine: Engine) -> None:
    fake = _fake()
    transport = httpx.ASGITransport(app=create_app(fake))
    settings = oauth_settings(database_url)
    asyncio.run(authorize(settings, engine, transport))
    results = asyncio.run(run_reconcile(settings, engine, BOTH, transport=transport))
    assert [r.outcome for r in results] == [RunOutcome.SUCCESS, RunOutcome.SUCCESS]
    for resource in BOTH:
        assert mirror_of(engine, resource) == truth_of(fake, resource)
    assert fake.stats.unauthorized == 0
    assert fake.oauth.stats.refreshes == 0  # the token lasts an hour: nothing to refresh


def test_an_expiry_during_a_pass_loses_no_request_and_shares_one_refresh(
    database_url: str, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = _fake(patients=2000)  # 20 pages, 8 in flight at once
    expiring = ExpiringAfter(create_app(fake), fake, requests=3)
    transport = httpx.ASGITransport(app=expiring)
    settings = oauth_settings(database_url, sync_concurrency=8)
    before = asyncio.run(authorize(settings, engine, transport))
    results = asyncio.run(run_reconcile(settings, engine, [Resource.PATIENT], transport=transport))
    (result,) = results
    assert result.outcome == RunOutcome.SUCCESS
    assert mirror_of(engine, Resource.PATIENT) == truth_of(fake, Resource.PATIENT)
    assert expiring.expired == 1
    # Every request HealthDock refused went again; none counted as an error.
    assert fake.oauth.stats.invalid_tokens >= 1
    with engine.connect() as connection:
        errors = connection.execute(
            select(sync_runs.c.errors).where(sync_runs.c.id == result.run_id)
        ).scalar_one()
    assert errors == 0
    # Requests in flight when the token expired all waited for the one refresh.
    assert fake.oauth.stats.refreshes == 1
    after = _stored_tokens(engine)
    assert after.refresh_token != before.refresh_token  # rotated, and stored at once
    assert _grant(engine).refresh_count == 1
    logged = " ".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    assert not any(prefix in logged for prefix in TOKEN_PREFIXES)


def test_the_token_is_refreshed_before_it_expires(database_url: str, engine: Engine) -> None:
    clock = ManualClock()
    fake = _fake(clock=clock, access_token_seconds=600)
    app = create_app(fake)
    transport = httpx.ASGITransport(app=app)
    settings = oauth_settings(database_url)
    asyncio.run(authorize(settings, engine, transport, clock=clock))

    async def one_page() -> None:
        registration = ClientRegistration.from_settings(settings)
        endpoint = TokenEndpoint(registration, transport=transport, clock=clock)
        grant = OAuthGrant(engine, Sealer(SECRET_KEY), endpoint, clock=clock)
        async with HealthDockClient(settings.api_url, grant, transport=transport) as client:
            await client.page(Resource.PATIENT, 1)
            assert fake.oauth.stats.refreshes == 0
            clock.advance(600 - 30)  # within the minute before it expires
            await client.page(Resource.PATIENT, 2)
            assert client.stats.by_status == {200: 2}  # no 401 on the way

    asyncio.run(one_page())
    assert fake.oauth.stats.refreshes == 1
    assert fake.oauth.stats.invalid_tokens == 0


def test_a_refused_refresh_ends_the_pass_and_stops_asking(
    database_url: str, engine: Engine
) -> None:
    fake = _fake()
    transport = httpx.ASGITransport(app=create_app(fake))
    settings = oauth_settings(database_url)
    tokens = asyncio.run(authorize(settings, engine, transport))

    async def revoke_at_healthdock() -> None:
        async with TokenEndpoint(
            ClientRegistration.from_settings(settings), transport=transport
        ) as endpoint:
            assert tokens.refresh_token is not None
            await endpoint.revoke(tokens.refresh_token, "refresh_token")

    asyncio.run(revoke_at_healthdock())
    (result,) = asyncio.run(
        run_reconcile(settings, engine, [Resource.PATIENT], transport=transport)
    )
    assert result.outcome == RunOutcome.INCOMPLETE
    assert result.error is not None
    assert "run healthdock-mirror oauth login" in result.error
    assert "invalid_grant" in result.error
    assert _grant(engine).state is GrantState.REFUSED
    asked, api_requests = fake.oauth.stats.token_requests, fake.stats.requests
    # The scheduler retries at its interval: each retry ends at once, asking nobody.
    for _ in range(3):
        (retry,) = asyncio.run(
            run_reconcile(settings, engine, [Resource.PATIENT], transport=transport)
        )
        assert retry.outcome == RunOutcome.INCOMPLETE
        assert retry.error is not None
        assert "oauth login" in retry.error
    assert fake.oauth.stats.token_requests == asked
    assert fake.stats.requests == api_requests
    # A new login makes it work again.
    asyncio.run(authorize(settings, engine, transport))
    (healed,) = asyncio.run(
        run_reconcile(settings, engine, [Resource.PATIENT], transport=transport)
    )
    assert healed.outcome == RunOutcome.SUCCESS


def test_a_token_endpoint_that_is_down_is_retried_and_the_grant_kept(
    database_url: str, engine: Engine
) -> None:
    fake = _fake()
    app = create_app(fake)
    transport = httpx.ASGITransport(app=app)
    settings = oauth_settings(database_url)
    asyncio.run(authorize(settings, engine, transport))
    fake.oauth.expire_access_tokens()
    fake.oauth.switches = fake.oauth.switches.updated({"token_endpoint_status": 503})

    async def one_pass() -> Any:
        registration = ClientRegistration.from_settings(settings)
        endpoint = TokenEndpoint(registration, transport=transport, attempts=3,
                                 sleep=lambda _: asyncio.sleep(0))  # fmt: skip
        grant = OAuthGrant(engine, Sealer(SECRET_KEY), endpoint)
        async with HealthDockClient(settings.api_url, grant, transport=transport) as client:
            return await reconcile(engine, client, Resource.PATIENT, pass_options(settings))

    down = asyncio.run(one_pass())
    assert down.outcome == RunOutcome.INCOMPLETE
    assert "gave up after 3 attempts" in down.error
    assert fake.oauth.stats.token_requests == 1 + 3  # the code exchange, then three tries
    assert _grant(engine).state is GrantState.ACTIVE  # unavailable is not refused
    fake.oauth.switches = fake.oauth.switches.updated({"token_endpoint_status": None})
    assert asyncio.run(one_pass()).outcome == RunOutcome.SUCCESS


@pytest.mark.parametrize("problem", ["no grant", "another key"])
def test_without_a_usable_grant_the_pass_says_what_to_do(
    database_url: str, engine: Engine, problem: str
) -> None:
    fake = _fake()
    transport = httpx.ASGITransport(app=create_app(fake))
    settings = oauth_settings(database_url)
    if problem == "another key":
        asyncio.run(authorize(settings, engine, transport))
        settings = oauth_settings(database_url, secret_key="another-key-of-thirty-two-characters")
    (result,) = asyncio.run(
        run_reconcile(settings, engine, [Resource.PATIENT], transport=transport)
    )
    assert result.outcome == RunOutcome.INCOMPLETE
    assert result.error is not None
    assert "run healthdock-mirror oauth login" in result.error
    if problem == "another key":
        assert "HEALTHDOCK_SECRET_KEY does not open" in result.error
    assert fake.stats.requests == 0


def test_a_reused_refresh_token_is_refused_and_the_grant_marked(
    database_url: str, engine: Engine
) -> None:
    """A refresh token presented after it was rotated (a copy restored from a backup, say) is
    taken by HealthDock for a stolen one: the grant's whole family is revoked."""
    fake = _fake()
    transport = httpx.ASGITransport(app=create_app(fake))
    settings = oauth_settings(database_url)
    asyncio.run(authorize(settings, engine, transport))
    old = _stored_tokens(engine)
    fake.oauth.expire_access_tokens()
    (first,) = asyncio.run(run_reconcile(settings, engine, [Resource.PATIENT], transport=transport))
    assert first.outcome == RunOutcome.SUCCESS  # refreshed, and the refresh token rotated
    # The mirror's database goes back to the old refresh token.
    store = functools.partial(
        oauth.store_refreshed, sealer=Sealer(SECRET_KEY), tokens=old, refreshed=_grant(engine)
    )
    assert write_transaction(engine, store)
    fake.oauth.expire_access_tokens()
    (second,) = asyncio.run(
        run_reconcile(settings, engine, [Resource.PATIENT], transport=transport)
    )
    assert second.outcome == RunOutcome.INCOMPLETE
    assert second.error is not None
    assert "invalid_grant" in second.error
    assert "run healthdock-mirror oauth login" in second.error
    assert fake.oauth.stats.reuse_detections == 1
    assert _grant(engine).state is GrantState.REFUSED


@pytest.mark.parametrize("answer", ["500", "nan lifetime", "no access token", "invalid_client"])
def test_a_failed_refresh_is_not_retried_blindly_and_keeps_the_grant(
    database_url: str, engine: Engine, answer: str
) -> None:
    """A refresh that may have reached HealthDock is not sent twice (it would look like a
    stolen token); only invalid_grant marks the grant refused."""
    fake = _fake()
    app = create_app(fake)

    async def token_endpoint(scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/oauth/token"
            and fake.oauth.stats.codes_exchanged
        ):
            fake.oauth.stats.token_requests += 1
            status, body = {
                "500": (500, b"{}"),
                "nan lifetime": (
                    200, b'{"access_token": "hdat_x", "token_type": "Bearer", "expires_in": NaN}'
                ),
                "no access token": (200, b'{"token_type": "Bearer"}'),
                "invalid_client": (401, b'{"error": "invalid_client"}'),
            }[answer]  # fmt: skip
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    transport = httpx.ASGITransport(app=token_endpoint)
    settings = oauth_settings(database_url)
    asyncio.run(authorize(settings, engine, transport))
    fake.oauth.expire_access_tokens()
    asked = fake.oauth.stats.token_requests
    (result,) = asyncio.run(run_reconcile(settings, engine, BOTH[:1], transport=transport))
    assert result.outcome == RunOutcome.INCOMPLETE
    assert fake.oauth.stats.token_requests == asked + 1  # once, for the pass's one refresh
    assert _grant(engine).state is GrantState.ACTIVE
    assert result.error is not None
    if answer == "invalid_client":
        assert "HEALTHDOCK_OAUTH_CLIENT_ID" in result.error


def test_a_refresh_cut_short_by_a_cancelled_request_still_stores_its_tokens(
    database_url: str, engine: Engine
) -> None:
    fake = _fake()
    app = create_app(fake)

    async def slow_token_endpoint(scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/oauth/token"
            and fake.oauth.stats.codes_exchanged
        ):
            await asyncio.sleep(0.3)
        await app(scope, receive, send)

    transport = httpx.ASGITransport(app=slow_token_endpoint)
    settings = oauth_settings(database_url)
    before = asyncio.run(authorize(settings, engine, transport))
    fake.oauth.expire_access_tokens()

    async def cancelled_mid_refresh() -> None:
        endpoint = TokenEndpoint(ClientRegistration.from_settings(settings), transport=transport)
        grant = OAuthGrant(engine, Sealer(SECRET_KEY), endpoint)
        async with HealthDockClient(settings.api_url, grant, transport=transport) as client:
            request = asyncio.create_task(client.page(Resource.PATIENT, 1))
            await asyncio.sleep(0.1)  # the 401 came; the refresh is on its way
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            await asyncio.sleep(0.5)  # the refresh ends on its own

    asyncio.run(cancelled_mid_refresh())
    assert fake.oauth.stats.refreshes == 1
    after = _stored_tokens(engine)
    assert after.refresh_token != before.refresh_token  # the rotated token was not lost
    (result,) = asyncio.run(run_reconcile(settings, engine, BOTH[:1], transport=transport))
    assert result.outcome == RunOutcome.SUCCESS
    assert fake.oauth.stats.reuse_detections == 0


def test_refreshed_tokens_the_database_did_not_take_are_used_and_stored_later(
    database_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database refuses the rotated tokens: the run goes on with them, refreshes from the
    newest refresh token (the stored one is spent: presenting it would revoke the grant), and
    stores them once the database takes them again."""
    fake = _fake()
    transport = httpx.ASGITransport(app=create_app(fake))
    settings = oauth_settings(database_url)
    asyncio.run(authorize(settings, engine, transport))
    store = oauth.store_refreshed

    def refused(*args: Any, **kwargs: Any) -> bool:
        raise DatabaseUnavailable("the database is away")

    async def two_refreshes() -> None:
        endpoint = TokenEndpoint(ClientRegistration.from_settings(settings), transport=transport)
        grant = OAuthGrant(engine, Sealer(SECRET_KEY), endpoint)
        async with HealthDockClient(settings.api_url, grant, transport=transport) as client:
            monkeypatch.setattr(oauth, "store_refreshed", refused)
            fake.oauth.expire_access_tokens()
            await client.page(Resource.PATIENT, 1)  # 401, refreshed, not stored
            fake.oauth.expire_access_tokens()
            await client.page(Resource.PATIENT, 2)  # 401 again: refreshed from the newest
            monkeypatch.setattr(oauth, "store_refreshed", store)
        # Closing the client stored what the database had refused.

    asyncio.run(two_refreshes())
    assert fake.oauth.stats.refreshes == 2
    assert fake.oauth.stats.reuse_detections == 0
    assert _grant(engine).refresh_count == 1  # one store, of the newest tokens
    (result,) = asyncio.run(run_reconcile(settings, engine, BOTH[:1], transport=transport))
    assert result.outcome == RunOutcome.SUCCESS
