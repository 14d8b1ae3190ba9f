"""The only writer and reader of ``api_tokens``: named tokens, their roles, who a token is.

A token is ``hdm_`` and 43 characters of ``secrets.token_urlsafe(32)``: 256 random bits, shown
once at creation and never stored; the table keeps its SHA-256. Lookup is by that hash (an
index), so no comparison of secrets happens in Python but the bootstrap token's, which is
constant-time. Revocation stamps ``revoked_at``; a revoked token is refused at its next
request, and so is every console session it opened (``mirror.sessions``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from config import MirrorError
from mirror.database import as_utc
from mirror.schema import api_tokens
from mirror.states import ADMIN_ROLE, Role

__all__ = [
    "BOOTSTRAP_NAME",
    "NAME_PATTERN",
    "Principal",
    "TokenError",
    "TokenInfo",
    "authenticate",
    "bootstrap_principal",
    "create_token",
    "list_tokens",
    "revoke_token",
    "token_hash",
]

BOOTSTRAP_NAME = "admin"
"""The actor of the bootstrap token (``HEALTHDOCK_ADMIN_TOKEN``) in audit rows and sessions."""

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
_NAME = re.compile(NAME_PATTERN)
_PREFIX = "hdm_"
# Actors the audit trail names without a token: the bootstrap token, a failed sign-in, the
# command line (cli:<user>), retention.
_RESERVED = frozenset({BOOTSTRAP_NAME, "unknown", "retention", "-"})


class TokenError(MirrorError):
    """A token cannot be created or revoked as asked (the message says why)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: a named token's name and role, or the bootstrap token."""

    name: str
    role: str  # a Role, or ADMIN_ROLE for the bootstrap token
    token_hash: str

    def may(self, role: Role) -> bool:
        """Whether this principal holds ``role``. The bootstrap token holds every role; an
        operator is also a viewer."""
        if self.role == ADMIN_ROLE or self.role == role:
            return True
        return role is Role.VIEWER and self.role == Role.OPERATOR


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bootstrap_principal(presented: str, bootstrap: str | None) -> Principal | None:
    """The bootstrap principal when ``presented`` is the configured bootstrap token."""
    if bootstrap is None:
        return None
    # Both sides hashed to one size first: constant time whatever the lengths.
    presented_hash, expected_hash = token_hash(presented), token_hash(bootstrap)
    if not hmac.compare_digest(presented_hash.encode(), expected_hash.encode()):
        return None
    return Principal(BOOTSTRAP_NAME, ADMIN_ROLE, expected_hash)


def authenticate(connection: Connection, presented: str, bootstrap: str | None) -> Principal | None:
    """Who ``presented`` is: the bootstrap token, or a named token not revoked; else None."""
    principal = bootstrap_principal(presented, bootstrap)
    if principal is not None:
        return principal
    if not presented.startswith(_PREFIX):
        return None
    digest = token_hash(presented)
    row = connection.execute(
        select(api_tokens.c.name, api_tokens.c.role).where(
            api_tokens.c.token_hash == digest, api_tokens.c.revoked_at.is_(None)
        )
    ).first()
    return None if row is None else Principal(str(row.name), str(row.role), digest)


def create_token(connection: Connection, name: str, role: Role) -> str:
    """Create the token ``name`` with ``role``; return the token itself (shown once)."""
    if not _NAME.fullmatch(name):
        raise TokenError(
            "a token's name is 1-64 characters: lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name in _RESERVED or name.startswith("cli"):
        raise TokenError(f"{name!r} names someone else in the audit trail; choose another")
    token = _PREFIX + secrets.token_urlsafe(32)
    try:
        with connection.begin_nested():
            connection.execute(
                insert(api_tokens).values(
                    name=name, role=role, token_hash=token_hash(token), created_at=datetime.now(UTC)
                )
            )
    except IntegrityError:
        raise TokenError(f"a token named {name!r} exists (revoked ones keep their name)") from None
    return token


def revoke_token(connection: Connection, name: str) -> bool:
    """Revoke the token ``name``; False when there is none, or it was revoked already."""
    revoked = connection.execute(
        update(api_tokens)
        .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
        .returning(api_tokens.c.id)
    ).first()
    return revoked is not None


def list_tokens(connection: Connection) -> list[TokenInfo]:
    c = api_tokens.c
    rows = connection.execute(select(c.name, c.role, c.created_at, c.revoked_at).order_by(c.name))
    return [
        TokenInfo(
            row.name,
            row.role,
            as_utc(row.created_at),
            None if row.revoked_at is None else as_utc(row.revoked_at),
        )
        for row in rows
    ]
