"""An OAuth grant from the fake HealthDock, obtained as a login would, for tests of its use."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import httpx
from sqlalchemy import Engine

from config import Settings
from fake_healthdock import OAuthClient
from mirror import Sealer, oauth, write_transaction
from sync.oauth import ClientRegistration, TokenEndpoint, start_authorization
from tests.conftest import make_settings

CLIENT_ID = "mirror-app"
SECRET_KEY = "a-test-secret-key-of-32-characters-at-least"
REDIRECT_URI = "http://127.0.0.1:8080/oauth/callback"
TOKEN_PREFIXES = ("hdat_", "hdrt_", "hdac_")  # the fake's access and refresh tokens, its codes


def oauth_client(redirect_uri: str = REDIRECT_URI, secret: str | None = None) -> OAuthClient:
    return OAuthClient(CLIENT_ID, (redirect_uri,), secret)


def oauth_settings(
    database_url: str, origin: str = "http://127.0.0.1", **overrides: object
) -> Settings:
    """Settings that reconcile through an OAuth grant from the fake at ``origin``."""
    return make_settings(
        database_url,
        **{
            "api_url": f"{origin}/v1",
            "api_auth": "oauth",
            "oauth_client_id": CLIENT_ID,
            "secret_key": SECRET_KEY,
            "oauth_authorize_url": f"{origin}/oauth/authorize",
            "oauth_token_url": f"{origin}/oauth/token",
            "oauth_revocation_url": f"{origin}/oauth/revoke",
            "oauth_redirect_uri": REDIRECT_URI,
            "api_attempts": 10,
            **overrides,
        },
    )


async def authorize(
    settings: Settings,
    engine: Engine,
    transport: httpx.AsyncBaseTransport,
    *,
    clock: Callable[[], float] = time.time,
) -> oauth.OAuthTokens:
    """Follow the authorization URL as a browser would, exchange the code, store the grant."""
    registration = ClientRegistration.from_settings(settings)
    request = start_authorization(registration)
    async with httpx.AsyncClient(transport=transport) as browser:
        answer = await browser.get(request.url)
    assert answer.status_code == 302, answer.text
    callback = parse_qs(urlsplit(answer.headers["location"]).query)
    assert callback["state"] == [request.state]
    async with TokenEndpoint(registration, transport=transport, clock=clock) as endpoint:
        tokens = await endpoint.exchange(callback["code"][0], request.code_verifier)
    assert settings.secret_key is not None
    store = functools.partial(
        oauth.store_grant, sealer=Sealer(settings.secret_key.get_secret_value()), tokens=tokens,
        client_id=CLIENT_ID, token_url=settings.oauth_token_url, actor="test",
        now=datetime.fromtimestamp(clock(), UTC),
    )  # fmt: skip
    write_transaction(engine, store)
    return tokens
