"""The only writer and reader of ``console_sessions``: the console's server-side sessions.

The browser holds a random session id (256 bits) in an ``HttpOnly`` cookie; the table holds its
SHA-256, who logged in, with which token, and the session's CSRF token. A session lives while
it is used, for ``MAX_AGE`` at most: one idle longer than the timeout is gone, and so is one
whose token was revoked (or,
for the bootstrap token, changed or removed from the settings) since it logged in: that is
checked at every request, so a revocation ends its sessions at once.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, exists, insert, select, update
from sqlalchemy.engine import Connection

from mirror.database import as_utc
from mirror.schema import api_tokens, console_sessions
from mirror.states import ADMIN_ROLE
from mirror.tokens import Principal, token_hash

__all__ = ["MAX_AGE", "Session", "end_session", "find_session", "start_session"]

# last_seen_at is written at most this often: a page view need not always be a write.
_TOUCH_EVERY = timedelta(seconds=30)
# However busy, a session ends this long after its sign-in: a sign-in a day, at least.
MAX_AGE = timedelta(hours=12)


@dataclass(frozen=True, slots=True)
class Session:
    principal: Principal
    csrf_token: str


def _id_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def start_session(connection: Connection, principal: Principal, client: str | None,
                  idle: timedelta) -> tuple[str, Session]:  # fmt: skip
    """A new session for ``principal``: (the cookie's id, the session). A new id at every
    login, so an id planted before it (session fixation) is worth nothing after."""
    now = datetime.now(UTC)
    # Sessions idle past the timeout are gone: remove them while we write anyway.
    connection.execute(delete(console_sessions).where(console_sessions.c.last_seen_at < now - idle))
    session_id = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    connection.execute(
        insert(console_sessions).values(
            id_hash=_id_hash(session_id), actor=principal.name, role=principal.role,
            token_hash=principal.token_hash, csrf_token=csrf, created_at=now, last_seen_at=now,
            client=None if client is None else client[:64],
        )
    )  # fmt: skip
    return session_id, Session(principal, csrf)


def find_session(
    connection: Connection, session_id: str, idle: timedelta, bootstrap: str | None
) -> Session | None:
    """The live session of ``session_id``; None when there is none, it was idle too long, or
    its token no longer lets anyone in."""
    now = datetime.now(UTC)
    c = console_sessions.c
    token_alive = exists().where(
        api_tokens.c.token_hash == c.token_hash, api_tokens.c.revoked_at.is_(None)
    )
    row = connection.execute(
        select(c.actor, c.role, c.token_hash, c.csrf_token, c.last_seen_at, token_alive).where(
            c.id_hash == _id_hash(session_id),
            c.last_seen_at >= now - idle,
            c.created_at >= now - MAX_AGE,
        )
    ).first()
    if row is None:
        return None
    if row.role == ADMIN_ROLE:
        if bootstrap is None or token_hash(bootstrap) != row.token_hash:
            return None
    elif not row[5]:
        return None
    if now - as_utc(row.last_seen_at) >= _TOUCH_EVERY:
        connection.execute(
            update(console_sessions)
            .where(c.id_hash == _id_hash(session_id))
            .values(last_seen_at=now)
        )
    return Session(Principal(row.actor, row.role, row.token_hash), row.csrf_token)


def end_session(connection: Connection, session_id: str) -> None:
    connection.execute(
        delete(console_sessions).where(console_sessions.c.id_hash == _id_hash(session_id))
    )
