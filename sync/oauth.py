"""OAuth 2.0 for the reconciler as a third-party application: the protocol's requests.

The authorization code grant with PKCE (RFC 6749 4.1, RFC 7636 S256), refresh (RFC 6749 6)
and revocation (RFC 7009), built with Authlib's protocol pieces: the authorization URL, the
code challenge, the token and revocation request bodies, client authentication
(``client_secret_basic`` for a confidential client, ``none`` for a public one). The requests go
through an httpx client of ours: Authlib's own httpx client is deprecated in favour of
httpx2 (Authlib 1.9), and the API client's transport (loopback or ASGI in tests) must be
the same here. What the token endpoint answers is checked here: a token type other than
Bearer, a body without an access token or with an absurd ``expires_in``, is an error, never
half a grant.

Retries: a refresh token or a code is single-use. A request that may have reached the server
(a read timeout, a dropped answer, a 500) is therefore never sent again: the server may have
rotated the refresh token already, and the same one presented twice would look stolen and
revoke the grant (RFC 9700 4.14.2). Only what surely did not arrive or was not processed (a
connection never made, 429, 503) is retried; revocation, which is idempotent, always is.

Tokens never reach a log line or an exception's text: errors carry the endpoint's error code.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7009.parameters import prepare_revoke_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from config import Settings
from mirror import oauth
from sync.client import UpstreamError

__all__ = ["LOGIN_HINT", "AuthorizationRequest", "ClientRegistration", "TokenEndpoint",
           "TokenEndpointUnavailable", "TokenRefused", "start_authorization"]  # fmt: skip

LOGIN_HINT = "run healthdock-mirror oauth login"
# An access token said to last longer than this is a malformed answer, not a gift.
_MAX_LIFETIME_SECONDS = 10 * 365 * 86_400
# Statuses after which the token endpoint surely did not use what was sent.
_NOT_PROCESSED = frozenset({429, 503})


class TokenRefused(UpstreamError):
    """The token endpoint refused the request (RFC 6749 5.2): ``error`` says how."""

    def __init__(self, error: str, what: str) -> None:
        super().__init__(f"{what}: HealthDock's token endpoint answered {error}")
        self.error = error


class TokenEndpointUnavailable(UpstreamError):
    """The token endpoint did not answer usably (after retries where a retry is safe). What
    was sent may or may not have been used: the grant is kept, not marked refused."""


class _Retryable(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ClientRegistration:
    """The application as HealthDock registered it, and its endpoints."""

    client_id: str
    client_secret: str | None = field(repr=False)
    authorize_url: str
    token_url: str
    revocation_url: str | None
    redirect_uri: str
    scope: str | None
    configured_issuer: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientRegistration:
        if settings.oauth_client_id is None:
            raise ValueError("HEALTHDOCK_OAUTH_CLIENT_ID is not set")
        secret = settings.oauth_client_secret
        return cls(
            settings.oauth_client_id, None if secret is None else secret.get_secret_value(),
            settings.oauth_authorize_url, settings.oauth_token_url,
            settings.oauth_revocation_url, settings.oauth_redirect_uri, settings.oauth_scope,
            settings.oauth_issuer,
        )  # fmt: skip

    @property
    def issuer(self) -> str:
        """Who answers the authorization request: what a callback's ``iss`` must be (RFC 9207):
        HEALTHDOCK_OAUTH_ISSUER, else the authorize URL's origin."""
        if self.configured_issuer is not None:
            return self.configured_issuer.rstrip("/")
        parts = urlsplit(self.authorize_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def requires_issuer(self) -> bool:
        """A configured issuer must be in every callback; without one, ``iss`` is checked when
        the callback has it."""
        return self.configured_issuer is not None

    def client_auth(self) -> Any:
        """Authlib's client authentication for the token and revocation endpoints."""
        method = "none" if self.client_secret is None else "client_secret_basic"
        return ClientAuth(self.client_id, self.client_secret, method)


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """Where to send the browser, and what only this login knows (never stored, never shown)."""

    url: str
    state: str = field(repr=False)
    code_verifier: str = field(repr=False)


def start_authorization(client: ClientRegistration) -> AuthorizationRequest:
    """A fresh ``state`` (CSRF, RFC 6749 10.12) and PKCE verifier (RFC 7636 4.1: 43 to 128
    characters; 64 of the URL-safe alphabet here), and the authorization URL they go into."""
    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(48)
    url = prepare_grant_uri(
        client.authorize_url,
        client.client_id,
        "code",
        redirect_uri=client.redirect_uri,
        scope=client.scope,
        state=state,
        code_challenge=create_s256_code_challenge(verifier),  # type: ignore[no-untyped-call]
        code_challenge_method="S256",
    )
    return AuthorizationRequest(str(url), state, verifier)


class TokenEndpoint:
    """The token and revocation endpoints, retried on 5xx, 429 and transport errors."""

    def __init__(
        self,
        client: ClientRegistration,
        *,
        timeout_seconds: float = 30.0,
        attempts: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self._http = httpx.AsyncClient(timeout=timeout_seconds, transport=transport)
        self._attempts = attempts
        self._clock = clock
        self._sleep = sleep
        self.requests = 0

    async def __aenter__(self) -> TokenEndpoint:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._http.aclose()

    async def exchange(self, code: str, code_verifier: str) -> oauth.OAuthTokens:
        """The authorization code for tokens (RFC 6749 4.1.3, with the PKCE verifier)."""
        body = prepare_token_request(
            "authorization_code", code=code, redirect_uri=self.client.redirect_uri,
            code_verifier=code_verifier,
        )  # fmt: skip
        answer = await self._post(self.client.token_url, body, "code exchange", single_use=True)
        return _tokens(answer, self._clock)

    async def refresh(self, refresh_token: str) -> oauth.OAuthTokens:
        """New tokens for a refresh token (RFC 6749 6). A server that does not rotate answers
        without a refresh token: the one presented goes on."""
        body = prepare_token_request("refresh_token", refresh_token=refresh_token)
        answer = await self._post(self.client.token_url, body, "refresh", single_use=True)
        tokens = _tokens(answer, self._clock)
        if tokens.refresh_token is None:
            tokens = oauth.OAuthTokens(
                tokens.access_token, refresh_token, tokens.token_type, tokens.expires_at,
                tokens.scope,
            )  # fmt: skip
        return tokens

    async def revoke(self, token: str, hint: str) -> None:
        """RFC 7009 revocation; raises ValueError when no revocation endpoint is configured."""
        if self.client.revocation_url is None:
            raise ValueError("HEALTHDOCK_OAUTH_REVOCATION_URL is not set")
        body, _ = prepare_revoke_token_request(token, hint)
        await self._post(
            self.client.revocation_url, body, "revocation", single_use=False, expect_json=False
        )

    async def _post(
        self, url: str, body: str, what: str, *, single_use: bool, expect_json: bool = True
    ) -> dict[str, Any]:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential_jitter(multiplier=0.5, max=10),
            retry=retry_if_exception_type(_Retryable),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(url, body, what, single_use, expect_json)
        except _Retryable as error:
            raise TokenEndpointUnavailable(
                f"{what}: {error} (gave up after {self._attempts} attempts)"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self, url: str, body: str, what: str, single_use: bool, expect_json: bool
    ) -> dict[str, Any]:
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        url, headers, body = self.client.client_auth().prepare("POST", url, headers, body)
        self.requests += 1
        try:
            response = await self._http.post(url, content=body.encode(), headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            raise _Retryable(type(error).__name__) from None  # it never left
        except httpx.TransportError as error:
            self._failed(single_use, type(error).__name__, what)
            raise
        status = response.status_code
        if status in _NOT_PROCESSED:
            raise _Retryable(f"HealthDock's token endpoint answered {status}")
        if status >= 500:
            self._failed(single_use, f"HealthDock's token endpoint answered {status}", what)
        document = _json(response)
        if status != 200:
            raise TokenRefused(_error_code(document, status), what)
        if expect_json and document is None:
            self._failed(single_use, "an unreadable answer (truncated?)", what)
        return document or {}

    @staticmethod
    def _failed(single_use: bool, problem: str, what: str) -> None:
        """A failure after which what was sent may have been used: retried only if it may be
        sent twice."""
        if not single_use:
            raise _Retryable(problem)
        raise TokenEndpointUnavailable(f"{what}: {problem} (not retried: it may have been used)")


def _json(response: httpx.Response) -> dict[str, Any] | None:
    try:
        document = response.json()
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _error_code(document: dict[str, Any] | None, status: int) -> str:
    """The RFC 6749 5.2 error code, if it is one (it is shown and logged: never free text)."""
    code = oauth.error_code(None if document is None else document.get("error"))
    return code if code is not None else f"status {status}"


def _tokens(document: dict[str, Any], clock: Callable[[], float]) -> oauth.OAuthTokens:
    access = document.get("access_token")
    token_type = document.get("token_type")
    if not isinstance(access, str) or not access:
        raise TokenEndpointUnavailable("token response: no access_token")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenEndpointUnavailable("token response: a token type other than Bearer")
    refresh = document.get("refresh_token")
    expires_in = document.get("expires_in")
    expires_at = None
    if expires_in is not None:
        if (
            not isinstance(expires_in, int | float)
            or isinstance(expires_in, bool)
            or not math.isfinite(expires_in)
            or not 0 < expires_in <= _MAX_LIFETIME_SECONDS
        ):
            raise TokenEndpointUnavailable("token response: expires_in is not a lifetime")
        expires_at = datetime.fromtimestamp(clock(), UTC) + timedelta(seconds=expires_in)
    scope = document.get("scope")
    return oauth.OAuthTokens(
        access, refresh if isinstance(refresh, str) and refresh else None, "Bearer", expires_at,
        scope if isinstance(scope, str) else None,
    )  # fmt: skip
