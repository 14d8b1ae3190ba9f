"""``healthdock-mirror oauth login|status|logout``: the reconciler's OAuth grant.

``login`` runs the authorization code grant with PKCE: it prints the authorization URL (alone on
standard output, for a person or a script to open), takes the callback through the database
(``mirror.oauth``: the receiver's ``/oauth/callback`` when the receiver listens on the
redirect URI, else a one-shot listener of its own bound there), checks the issuer, exchanges
the code and stores the tokens sealed. ``status`` describes the grant without the key and
never shows a token. ``logout`` revokes where HealthDock has a revocation endpoint
(HEALTHDOCK_OAUTH_REVOCATION_URL), then forgets. Login and logout are on the audit trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import click
import httpx
from sqlalchemy import Engine

from config import ApiAuth, Settings
from healthdock_mirror.access_commands import cli_entry
from healthdock_mirror.context import (
    configure_logs,
    current_schema,
    database,
    ensure_schema,
    existing_mirror,
    settings_or_exit,
)
from mirror import (
    AuditAction,
    AuditOutcome,
    GrantState,
    Sealer,
    SealError,
    audit,
    oauth,
    read_transaction,
    write_transaction,
)
from sync import oauth as oauth_flow

_POLL_SECONDS = 0.2


@click.group("oauth")
def oauth_group() -> None:
    """The reconciler's OAuth 2.0 authorization (HEALTHDOCK_API_AUTH=oauth), in place of an
    API key: for a vendor that runs the mirror as a third-party application."""


def _registration(settings: Settings) -> tuple[oauth_flow.ClientRegistration, Sealer]:
    if settings.missing_for_oauth:
        raise click.ClickException(f"{', '.join(settings.missing_for_oauth)}: needed for OAuth")
    assert settings.secret_key is not None
    return oauth_flow.ClientRegistration.from_settings(settings), Sealer(
        settings.secret_key.get_secret_value()
    )


def _record(engine: Engine, action: AuditAction, target: str, outcome: AuditOutcome) -> None:
    entry = cli_entry(action, target, outcome)
    write_transaction(engine, functools.partial(audit.record_audit, entry=entry))


@oauth_group.command()
@click.option(
    "--timeout", type=click.FloatRange(min=1, max=3600), default=300.0, show_default=True,
    help="Seconds to wait for HealthDock's callback.",
)  # fmt: skip
def login(timeout: float) -> None:
    """Authorize the reconciler: open the printed URL in a browser signed in to HealthDock."""
    settings = settings_or_exit()
    configure_logs(settings)
    registration, sealer = _registration(settings)
    if settings.api_auth is not ApiAuth.OAUTH:
        click.echo("note: HEALTHDOCK_API_AUTH is not oauth: reconciles keep the API key", err=True)
    ensure_schema(settings)
    with database(settings) as engine:
        target = f"client {registration.client_id}"
        try:
            tokens = asyncio.run(_login(engine, registration, timeout))
        except click.ClickException:
            _record(engine, AuditAction.OAUTH_LOGIN, target, AuditOutcome.FAILED)
            raise
        store = functools.partial(
            oauth.store_grant, sealer=sealer, tokens=tokens, client_id=registration.client_id,
            token_url=registration.token_url, actor=cli_entry(AuditAction.OAUTH_LOGIN, "",
                                                              AuditOutcome.OK).actor,
        )  # fmt: skip
        write_transaction(engine, store)
        _record(engine, AuditAction.OAUTH_LOGIN, target, AuditOutcome.OK)
    expiry = "no expiry" if tokens.expires_at is None else f"expires {_iso(tokens.expires_at)}"
    click.echo(
        f"authorized: client {registration.client_id}, scopes {tokens.scope or '(default)'}, "
        f"access token {expiry}, refresh token {'held' if tokens.refresh_token else 'none'}",
        err=True,
    )


async def _login(
    engine: Engine, registration: oauth_flow.ClientRegistration, wait_seconds: float
) -> oauth.OAuthTokens:
    request = oauth_flow.start_authorization(registration)
    opened = functools.partial(
        oauth.open_login, state=request.state, ttl=timedelta(seconds=wait_seconds)
    )
    await asyncio.to_thread(write_transaction, engine, opened)
    try:
        async with _callback_listener(engine, registration.redirect_uri) as where:
            click.echo(f"Open this URL in a browser signed in to HealthDock ({where}):", err=True)
            click.echo(request.url)
            callback = await _wait_for_callback(engine, request.state, wait_seconds)
    finally:
        dropped = functools.partial(oauth.drop_login, state=request.state)
        await asyncio.to_thread(write_transaction, engine, dropped)
    if callback is None:
        raise click.ClickException(
            f"no callback from HealthDock within {wait_seconds:g} s (if the receiver took it: "
            "does it use this HEALTHDOCK_DATABASE_URL?)"
        )
    if callback.error is not None:
        raise click.ClickException(f"HealthDock did not authorize: {callback.error}")
    if (callback.issuer is None and registration.requires_issuer) or (
        callback.issuer is not None and callback.issuer.rstrip("/") != registration.issuer
    ):
        # RFC 9207: the answer came from another authorization server than the one asked.
        raise click.ClickException(
            "the callback does not name the authorization server that was asked (its iss is "
            "not HEALTHDOCK_OAUTH_ISSUER, or the authorize URL's origin): refused"
        )
    assert callback.code is not None
    async with oauth_flow.TokenEndpoint(registration) as endpoint:
        try:
            return await endpoint.exchange(callback.code, request.code_verifier)
        except (oauth_flow.TokenRefused, oauth_flow.TokenEndpointUnavailable) as error:
            raise click.ClickException(str(error)) from None


async def _wait_for_callback(
    engine: Engine, state: str, wait_seconds: float
) -> oauth.LoginCallback | None:
    take = functools.partial(oauth.take_login, state=state)
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while asyncio.get_running_loop().time() < deadline:
        callback = await asyncio.to_thread(write_transaction, engine, take)
        if callback is not None:
            return callback
        await asyncio.sleep(_POLL_SECONDS)
    return None


@contextlib.asynccontextmanager
async def _callback_listener(engine: Engine, redirect_uri: str) -> AsyncIterator[str]:
    """Listen on the redirect URI for the callback, unless the receiver already does (then
    its ``/oauth/callback`` completes the login through the database)."""
    parts = urlsplit(redirect_uri)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.scheme == "https":
        # TLS is the proxy's in front of the receiver: only the receiver can take it.
        yield "the receiver behind your proxy takes the callback"
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listening = socket.create_server((host, port), family=family)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise click.ClickException(
                f"HEALTHDOCK_OAUTH_REDIRECT_URI: cannot listen on {host}:{port} ({error.strerror})"
            ) from None
        if not await _receiver_answers(f"{parts.scheme}://{parts.netloc}"):
            raise click.ClickException(
                f"HEALTHDOCK_OAUTH_REDIRECT_URI: {host}:{port} is taken by something other than "
                "a ready healthdock-mirror receiver"
            ) from None
        yield f"the receiver on {host}:{port} takes the callback"
        return
    # Imported here: the web stack costs every other command a fifth of a second to import.
    import uvicorn

    from receiver import callback_app

    server = uvicorn.Server(
        uvicorn.Config(
            callback_app(engine), lifespan="off", ws="none", log_config=None, access_log=False,
            log_level="warning",
        )
    )  # fmt: skip
    # The socket listens already: a browser that is quicker than uvicorn's start waits in its
    # backlog, so the URL can be printed at once.
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    try:
        yield f"listening on {host}:{port} for the callback"
    finally:
        server.should_exit = True
        await serving
        listening.close()


async def _receiver_answers(origin: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            answer = await http.get(f"{origin}/readyz")
    except httpx.HTTPError:
        return False
    try:
        return answer.status_code == 200 and answer.json() == {"status": "ready"}
    except ValueError:
        return False


@oauth_group.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of lines.")
def status(as_json: bool) -> None:
    """The stored grant: its client, scopes, expiry, and who ran the login (the operating
    system's user; HealthDock knows which of its accounts approved). Never a token. Exit 1
    when there is no usable grant."""
    settings = settings_or_exit()
    configure_logs(settings)
    existing_mirror(settings)
    with database(settings) as engine:
        current_schema(engine)
        info = read_transaction(engine, oauth.grant_info)
    now = datetime.now(UTC)
    document: dict[str, Any] = {"api_auth": settings.api_auth.value, "grant": None}
    if info is not None:
        document["grant"] = {
            "client_id": info.client_id, "state": info.state.value, "scope": info.scope,
            "authorized_by": info.authorized_by, "authorized_at": _iso(info.authorized_at),
            "access_expires_at": _iso(info.access_expires_at),
            "access_expired": info.access_expires_at is not None and info.access_expires_at <= now,
            "refresh_token": info.has_refresh_token, "refreshed_at": _iso(info.refreshed_at),
            "refreshes": info.refresh_count, "token_url": info.token_url,
        }  # fmt: skip
    usable = info is not None and info.state is GrantState.ACTIVE
    if as_json:
        click.echo(json.dumps(document, indent=2))
    elif info is None:
        click.echo(
            f"api auth: {settings.api_auth.value}; no OAuth grant (healthdock-mirror oauth login)"
        )
    else:
        expiry = info.access_expires_at
        lines = [
            f"api auth:       {settings.api_auth.value}"
            + ("" if settings.api_auth is ApiAuth.OAUTH else " (this grant is not used)"),
            f"client:         {info.client_id}",
            f"state:          {info.state.value}"
            + ("" if usable else ": run healthdock-mirror oauth login"),
            f"authorized by:  {info.authorized_by} at {_iso(info.authorized_at)}",
            f"scopes:         {info.scope or '(not stated)'}",
            "access token:   "
            + ("no expiry" if expiry is None else
               f"{'expired' if expiry <= now else 'expires'} {_iso(expiry)}"),
            f"refresh token:  {'held' if info.has_refresh_token else 'none'}",
            f"refreshed:      {info.refresh_count} times"
            + ("" if info.refreshed_at is None else f", last at {_iso(info.refreshed_at)}"),
        ]  # fmt: skip
        click.echo("\n".join(lines))
    if not usable:
        raise SystemExit(1)


@oauth_group.command()
def logout() -> None:
    """Revoke the grant at HealthDock (if HEALTHDOCK_OAUTH_REVOCATION_URL is set), then forget
    it here. Without HEALTHDOCK_SECRET_KEY (or with another one) it can only forget."""
    settings = settings_or_exit()
    configure_logs(settings)
    existing_mirror(settings)
    with database(settings) as engine:
        current_schema(engine)
        info = read_transaction(engine, oauth.grant_info)
        problem = None
        if info is not None:
            problem = _revoke_stored(settings, engine)
        forgotten = write_transaction(engine, oauth.forget_grant)
        target = "no grant" if info is None else f"client {info.client_id}"
        outcome = AuditOutcome.OK if problem is None else AuditOutcome.FAILED
        _record(engine, AuditAction.OAUTH_LOGOUT, target, outcome)
    click.echo("forgot the OAuth grant" if forgotten else "there was no OAuth grant", err=True)
    if problem is not None:
        raise click.ClickException(
            f"not revoked ({problem}): the grant is forgotten here but may stay valid at "
            "HealthDock until it expires"
        )


def _revoke_stored(settings: Settings, engine: Engine) -> str | None:
    """Revoke the stored grant; what kept it from being revoked, if anything."""
    if settings.oauth_client_id is None or settings.secret_key is None:
        return "HEALTHDOCK_OAUTH_CLIENT_ID and HEALTHDOCK_SECRET_KEY are needed to revoke"
    registration = oauth_flow.ClientRegistration.from_settings(settings)
    if registration.revocation_url is None:
        click.echo("HEALTHDOCK_OAUTH_REVOCATION_URL is not set: the tokens are only forgotten "
                   "here and stay valid at HealthDock until they expire", err=True)  # fmt: skip
        return None
    sealer = Sealer(settings.secret_key.get_secret_value())
    try:
        loaded = read_transaction(engine, functools.partial(oauth.load_tokens, sealer=sealer))
    except SealError as error:
        return str(error)
    if loaded is None:
        return None
    return asyncio.run(_revoke(registration, loaded[1]))


async def _revoke(
    registration: oauth_flow.ClientRegistration, tokens: oauth.OAuthTokens
) -> str | None:
    """Revoke the refresh token (its whole grant, RFC 7009 2.1), then the access token."""
    async with oauth_flow.TokenEndpoint(registration) as endpoint:
        try:
            if tokens.refresh_token is not None:
                await endpoint.revoke(tokens.refresh_token, "refresh_token")
            await endpoint.revoke(tokens.access_token, "access_token")
        except (oauth_flow.TokenRefused, oauth_flow.TokenEndpointUnavailable) as error:
            return str(error)
    return None


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds")
