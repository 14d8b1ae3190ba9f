"""The reconciler's OAuth grant as the API client's credentials.

Its access token is refreshed shortly before it expires, and once when HealthDock refuses it
anyway (revoked, clocks apart); concurrent requests share one refresh (a lock: the second
waiter finds the token new). The grant lives in the database (``mirror.oauth``): a refresh
reads it first, since a login may have replaced it, and stores the rotated tokens at once.
Every API call runs under the reconcile lease, so only one process refreshes at a time; two
would present the same refresh token, and HealthDock would take the second for a stolen one
(RFC 9700 4.14.2) and revoke the grant.

A refused refresh (``invalid_grant``) marks the grant refused: later passes end at once with
"run healthdock-mirror oauth login", without asking the token endpoint again. A refresh, once
sent, runs to its end even if the request that needed it is cancelled, and its tokens are
kept in memory until the database has them: a rotated refresh token is never lost.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from mirror import (
    DatabaseUnavailable,
    GrantState,
    Sealer,
    SealError,
    oauth,
    read_transaction,
    write_transaction,
)
from sync.client import UpstreamError
from sync.oauth import LOGIN_HINT, TokenEndpoint, TokenRefused

log = logging.getLogger(__name__)

# Refresh this long before the access token expires, or a tenth of its lifetime if shorter.
_LEEWAY = timedelta(seconds=60)


class AuthorizationNeeded(UpstreamError):
    """The reconciler holds no usable authorization: an operator must log in again."""


class OAuthGrant:
    """The stored grant, refreshed as needed. ``token_endpoint`` is closed with it."""

    refusal_hint = LOGIN_HINT

    def __init__(
        self,
        engine: Engine,
        sealer: Sealer,
        token_endpoint: TokenEndpoint,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._sealer = sealer
        self._endpoint = token_endpoint
        self._clock = clock
        self._lock = asyncio.Lock()
        self._info: oauth.GrantInfo | None = None
        self._tokens: oauth.OAuthTokens | None = None
        self._unsaved: tuple[oauth.GrantInfo, oauth.OAuthTokens] | None = None
        self._failure: UpstreamError | None = None
        self.refreshes = 0

    async def authorization(self) -> str:
        if self._tokens is None or self._expiring(self._info, self._tokens):
            async with self._lock:
                if self._tokens is None or self._expiring(self._info, self._tokens):
                    await self._renew(rejected=None)
        assert self._tokens is not None
        return f"Bearer {self._tokens.access_token}"

    async def rejected(self, authorization: str) -> bool:
        async with self._lock:
            current = None if self._tokens is None else f"Bearer {self._tokens.access_token}"
            if current is not None and current != authorization:
                return True  # refreshed meanwhile by another request
            await self._renew(rejected=authorization)
        return True

    async def aclose(self) -> None:
        try:
            await self._store_unsaved()
        finally:
            await self._endpoint.__aexit__()

    def _expiring(self, info: oauth.GrantInfo | None, tokens: oauth.OAuthTokens) -> bool:
        if tokens.expires_at is None:
            return False
        now = datetime.fromtimestamp(self._clock(), UTC)
        issued = None if info is None else (info.refreshed_at or info.authorized_at)
        leeway = _LEEWAY
        if issued is not None and tokens.expires_at > issued:
            leeway = min(leeway, (tokens.expires_at - issued) / 10)
        return tokens.expires_at - leeway <= now

    async def _renew(self, *, rejected: str | None) -> None:
        """Take the stored tokens if they are good (new ones from another login); else
        refresh. ``rejected``: the header HealthDock refused, which no longer counts as good.
        A failure is remembered: the requests waiting on the lock, and the rest of this run,
        get it at once instead of asking the token endpoint again."""
        if self._failure is not None:
            raise self._failure
        try:
            await self._store_unsaved()
            if self._unsaved is not None:
                # The newest tokens are only in memory (the database did not take them): the
                # stored refresh token is spent, and presenting it would revoke the grant.
                info, tokens = self._unsaved
            else:
                info, tokens = await self._load()
            usable = not self._expiring(info, tokens)
            if rejected is not None and f"Bearer {tokens.access_token}" == rejected:
                usable = False
            if usable:
                self._info, self._tokens = info, tokens
                return
            if tokens.refresh_token is None:
                raise AuthorizationNeeded(
                    f"the OAuth access token expired and HealthDock issued no refresh token: "
                    f"{LOGIN_HINT}"
                )
            # Shielded: once HealthDock rotated the refresh token, the new one must be kept
            # even if this request is cancelled (a sibling page failed, the lease was lost).
            refreshing = asyncio.ensure_future(self._refresh(info, tokens.refresh_token))
            # Its outcome is read here, or (if this request was cancelled) by this callback.
            refreshing.add_done_callback(lambda done: done.cancelled() or done.exception())
            await asyncio.shield(refreshing)
        except UpstreamError as error:
            self._failure = error
            raise

    async def _refresh(self, info: oauth.GrantInfo, refresh_token: str) -> None:
        try:
            fresh = await self._endpoint.refresh(refresh_token)
        except TokenRefused as refusal:
            if refusal.error != "invalid_grant":
                # The client's registration or the request is at fault, not the grant: a
                # corrected setting makes the same grant work again.
                raise AuthorizationNeeded(
                    f"HealthDock's token endpoint refused the refresh ({refusal.error}): check "
                    f"HEALTHDOCK_OAUTH_CLIENT_ID and _SECRET, or {LOGIN_HINT}"
                ) from None
            await asyncio.to_thread(
                write_transaction, self._engine, functools.partial(oauth.mark_refused, refused=info)
            )
            log.warning("OAuth refresh refused (invalid_grant): the grant is marked refused")
            raise AuthorizationNeeded(
                f"HealthDock refused the OAuth refresh token (invalid_grant): {LOGIN_HINT}"
            ) from None
        self.refreshes += 1
        self._tokens = fresh  # in use at once; kept in memory until it is stored
        self._unsaved = (info, fresh)
        await self._store_unsaved()
        log.info("OAuth access token refreshed")

    async def _store_unsaved(self) -> None:
        """Store the last refresh's tokens over the grant they refreshed. The database away,
        they stay in memory (this run goes on with them) and storing is tried again."""
        if self._unsaved is None:
            return
        info, fresh = self._unsaved
        now = datetime.fromtimestamp(self._clock(), UTC)
        store = functools.partial(
            oauth.store_refreshed, sealer=self._sealer, tokens=fresh, refreshed=info, now=now
        )
        try:
            stored = await asyncio.to_thread(write_transaction, self._engine, store)
            current = await asyncio.to_thread(read_transaction, self._engine, oauth.grant_info)
        except DatabaseUnavailable:
            log.warning("the refreshed OAuth tokens cannot be stored yet: trying again later")
            return
        self._unsaved = None
        if not stored:
            log.warning(
                "the OAuth grant was replaced by a login while it was refreshed: this run goes "
                "on with the refreshed tokens; the login's grant is kept"
            )
        elif current is not None:
            self._info = current

    async def _load(self) -> tuple[oauth.GrantInfo, oauth.OAuthTokens]:
        def load(connection: Connection) -> tuple[oauth.GrantInfo, oauth.OAuthTokens] | None:
            return oauth.load_tokens(connection, self._sealer)

        try:
            loaded = await asyncio.to_thread(read_transaction, self._engine, load)
        except SealError as error:
            raise AuthorizationNeeded(f"{error}: {LOGIN_HINT} again") from None
        if loaded is None:
            raise AuthorizationNeeded(f"no OAuth authorization is stored: {LOGIN_HINT}")
        info, tokens = loaded
        if info.state is GrantState.REFUSED:
            raise AuthorizationNeeded(
                f"HealthDock refused the stored OAuth grant's refresh token: {LOGIN_HINT}"
            )
        client = self._endpoint.client
        if (info.client_id, info.token_url) != (client.client_id, client.token_url):
            raise AuthorizationNeeded(
                "the stored OAuth grant is for another client or token endpoint than "
                f"HEALTHDOCK_OAUTH_CLIENT_ID and HEALTHDOCK_OAUTH_TOKEN_URL say: {LOGIN_HINT}"
            )
        return info, tokens
