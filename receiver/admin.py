"""The guard of admin and feed endpoints: ``Authorization: Bearer $HEALTHDOCK_ADMIN_TOKEN``.

Closed by default: without a configured token nobody gets in. The token is compared in
constant time, and never logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from config import Settings

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="healthdock-mirror admin"'}


def token_matches(presented: str, expected: str) -> bool:
    """Constant time, whatever the lengths: both sides are hashed to one size first."""
    return hmac.compare_digest(
        hashlib.sha256(presented.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def require_admin_token(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """A Litestar guard: 403 when no admin token is configured, 401 for a missing or wrong one."""
    settings: Settings = connection.app.state.settings
    expected = settings.admin_token.get_secret_value() if settings.admin_token else ""
    if not expected:
        raise PermissionDeniedException(
            "admin endpoints are disabled: set HEALTHDOCK_ADMIN_TOKEN to enable them"
        )
    presented = bearer_token(connection.headers.get("authorization"))
    if presented is None:
        raise NotAuthorizedException(
            "admin token required: send Authorization: Bearer <HEALTHDOCK_ADMIN_TOKEN>",
            headers=dict(_CHALLENGE),
        )
    if not token_matches(presented, expected):
        raise NotAuthorizedException("wrong admin token", headers=dict(_CHALLENGE))
