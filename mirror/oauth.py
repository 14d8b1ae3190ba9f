"""The only writer and reader of ``oauth_grants`` and ``oauth_logins``.

``oauth_grants`` holds the reconciler's one OAuth grant: its access and refresh tokens sealed
(``mirror.sealing``; the key is HEALTHDOCK_SECRET_KEY's), and beside them what ``oauth status``
shows without the key (client, scopes, expiry, who authorized it, refreshes). A refresh stores
the new tokens only over the grant it refreshed (compare and set on the login's random
``grant_id`` and ``refresh_count``), so a login that replaced the grant meanwhile is never
overwritten with an older family's tokens, nor marked refused for the old family's refusal.

``oauth_logins`` carries a login's callback from whichever process received it (the receiver,
or the login's own listener) to the login: found by the SHA-256 of its ``state``, completed
once, taken once.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from mirror.database import as_utc
from mirror.schema import oauth_grants, oauth_logins
from mirror.sealing import Sealer
from mirror.states import GrantState

__all__ = ["GRANT_NAME", "GrantInfo", "LoginCallback", "OAuthTokens", "complete_login",
           "drop_login", "error_code", "forget_grant", "grant_info", "load_tokens",
           "mark_refused", "open_login", "store_grant", "store_refreshed",
           "take_login"]  # fmt: skip

GRANT_NAME = "healthdock"
# An OAuth error code (RFC 6749 5.2 and 4.1.2.1 use these characters): shown and stored only
# when it is one, never a server's free text.
_ERROR_CODE = re.compile(r"[a-z_]{1,64}")


def error_code(value: object) -> str | None:
    """``value`` if it is an OAuth error code, else None."""
    return value if isinstance(value, str) and _ERROR_CODE.fullmatch(value) else None


@dataclass(frozen=True, slots=True)
class OAuthTokens:
    """What the token endpoint issued. The tokens never show in a repr (nor in a log)."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    token_type: str
    expires_at: datetime | None
    scope: str | None


@dataclass(frozen=True, slots=True)
class GrantInfo:
    grant_id: str
    client_id: str
    token_url: str
    scope: str | None
    access_expires_at: datetime | None
    has_refresh_token: bool
    state: GrantState
    authorized_by: str
    authorized_at: datetime
    refreshed_at: datetime | None
    refresh_count: int


@dataclass(frozen=True, slots=True)
class LoginCallback:
    """What the callback brought: a code, or the authorization server's error code."""

    code: str | None
    error: str | None
    issuer: str | None


def _context(client_id: str) -> bytes:
    return f"oauth_grants/{GRANT_NAME}/{client_id}".encode()


def _seal(sealer: Sealer, tokens: OAuthTokens, client_id: str) -> bytes:
    secret = {"access_token": tokens.access_token, "refresh_token": tokens.refresh_token}
    return sealer.seal(json.dumps(secret).encode(), _context(client_id))


def _info(row: object) -> GrantInfo:
    m = row._mapping  # type: ignore[attr-defined]
    return GrantInfo(
        m["grant_id"], m["client_id"], m["token_url"], m["scope"],
        None if m["access_expires_at"] is None else as_utc(m["access_expires_at"]),
        bool(m["has_refresh_token"]), GrantState(m["state"]), m["authorized_by"],
        as_utc(m["authorized_at"]),
        None if m["refreshed_at"] is None else as_utc(m["refreshed_at"]), int(m["refresh_count"]),
    )  # fmt: skip


def grant_info(connection: Connection) -> GrantInfo | None:
    """The grant's description (no key needed, no token in it), or None if there is none."""
    row = connection.execute(select(oauth_grants).where(oauth_grants.c.name == GRANT_NAME)).first()
    return None if row is None else _info(row)


def load_tokens(connection: Connection, sealer: Sealer) -> tuple[GrantInfo, OAuthTokens] | None:
    """The grant and its tokens; raises SealError if the key cannot open them."""
    row = connection.execute(select(oauth_grants).where(oauth_grants.c.name == GRANT_NAME)).first()
    if row is None:
        return None
    info = _info(row)
    secret = json.loads(sealer.open(row._mapping["sealed_tokens"], _context(info.client_id)))
    tokens = OAuthTokens(
        secret["access_token"], secret["refresh_token"], "Bearer", info.access_expires_at,
        info.scope,
    )  # fmt: skip
    return info, tokens


def store_grant(
    connection: Connection,
    sealer: Sealer,
    tokens: OAuthTokens,
    *,
    client_id: str,
    token_url: str,
    actor: str,
    now: datetime | None = None,
) -> None:
    """A new grant (a login): it replaces whatever grant was there."""
    now = now or datetime.now(UTC)
    connection.execute(delete(oauth_grants).where(oauth_grants.c.name == GRANT_NAME))
    connection.execute(
        insert(oauth_grants).values(
            name=GRANT_NAME, grant_id=secrets.token_hex(16), client_id=client_id,
            token_url=token_url, scope=tokens.scope,
            sealed_tokens=_seal(sealer, tokens, client_id), access_expires_at=tokens.expires_at,
            has_refresh_token=tokens.refresh_token is not None, state=GrantState.ACTIVE,
            authorized_by=actor, authorized_at=now, refresh_count=0,
        )
    )  # fmt: skip


def store_refreshed(
    connection: Connection,
    sealer: Sealer,
    tokens: OAuthTokens,
    *,
    refreshed: GrantInfo,
    now: datetime | None = None,
) -> bool:
    """The tokens of a refresh of the grant as ``refreshed`` describes it; False (nothing
    written) if the grant has changed since (another login, another refresh)."""
    now = now or datetime.now(UTC)
    written = connection.execute(
        update(oauth_grants)
        .where(
            oauth_grants.c.name == GRANT_NAME,
            oauth_grants.c.grant_id == refreshed.grant_id,
            oauth_grants.c.refresh_count == refreshed.refresh_count,
        )
        .values(
            sealed_tokens=_seal(sealer, tokens, refreshed.client_id),
            access_expires_at=tokens.expires_at,
            has_refresh_token=tokens.refresh_token is not None,
            scope=tokens.scope if tokens.scope is not None else oauth_grants.c.scope,
            state=GrantState.ACTIVE, refreshed_at=now, refresh_count=refreshed.refresh_count + 1,
        )
    )  # fmt: skip
    return written.rowcount == 1


def mark_refused(connection: Connection, *, refused: GrantInfo) -> None:
    """HealthDock refused the refresh token of the grant as ``refused`` describes it: nothing
    but a new login can help (a grant that changed since is left alone)."""
    connection.execute(
        update(oauth_grants)
        .where(
            oauth_grants.c.name == GRANT_NAME,
            oauth_grants.c.grant_id == refused.grant_id,
            oauth_grants.c.refresh_count == refused.refresh_count,
        )
        .values(state=GrantState.REFUSED)
    )


def forget_grant(connection: Connection) -> bool:
    removed = connection.execute(delete(oauth_grants).where(oauth_grants.c.name == GRANT_NAME))
    return removed.rowcount > 0


def _state_hash(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def open_login(
    connection: Connection, state: str, *, ttl: timedelta, now: datetime | None = None
) -> None:
    """A login waiting for its callback until ``ttl`` from now (expired ones are removed)."""
    now = now or datetime.now(UTC)
    connection.execute(delete(oauth_logins).where(oauth_logins.c.expires_at < now))
    connection.execute(
        insert(oauth_logins).values(
            state_hash=_state_hash(state), created_at=now, expires_at=now + ttl
        )
    )


def complete_login(
    connection: Connection, state: str, callback: LoginCallback, *, now: datetime | None = None
) -> bool:
    """The callback for the login with this ``state``; False if no such login waits (an unknown
    or expired state, or one already completed: a callback counts once)."""
    now = now or datetime.now(UTC)
    completed = connection.execute(
        update(oauth_logins)
        .where(
            oauth_logins.c.state_hash == _state_hash(state),
            oauth_logins.c.completed_at.is_(None),
            oauth_logins.c.expires_at >= now,
        )
        .values(completed_at=now, code=callback.code, error=callback.error, issuer=callback.issuer)
    )
    return completed.rowcount == 1


def take_login(connection: Connection, state: str) -> LoginCallback | None:
    """The login's callback once it came (its row is then removed), else None."""
    row = connection.execute(
        select(oauth_logins).where(
            oauth_logins.c.state_hash == _state_hash(state),
            oauth_logins.c.completed_at.is_not(None),
        )
    ).first()
    if row is None:
        return None
    connection.execute(delete(oauth_logins).where(oauth_logins.c.state_hash == _state_hash(state)))
    m = row._mapping
    return LoginCallback(m["code"], m["error"], m["issuer"])


def drop_login(connection: Connection, state: str) -> None:
    """A login that gave up: its callback, should it still come, is refused."""
    connection.execute(delete(oauth_logins).where(oauth_logins.c.state_hash == _state_hash(state)))
