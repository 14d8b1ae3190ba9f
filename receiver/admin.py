"""The guard of admin and feed endpoints: ``Authorization: Bearer $HEALTHDOCK_ADMIN_TOKEN``.

Closed by default: without a configured token (or with a blank one) nobody gets in. The token
is compared in constant time, and never logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import SecurityRequirement, SecurityScheme

from config import Settings

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="healthdock-mirror admin"'}
_AUTHORIZATION = b"authorization"  # ASGI header names are lower case

# For the OpenAPI document: the scheme (in components) and what each guarded operation declares.
ADMIN_SCHEME = "adminToken"
ADMIN_SECURITY_SCHEME = SecurityScheme(
    type="http",
    scheme="bearer",
    description="`Authorization: Bearer $HEALTHDOCK_ADMIN_TOKEN`",
)
ADMIN_SECURITY: list[SecurityRequirement] = [{ADMIN_SCHEME: []}]


def configured_admin_token(settings: Settings) -> str | None:
    """The admin token, or None when it is unset or blank: a blank one disables the admin
    endpoints, as no token does (nobody could present it: a bearer token is never blank)."""
    token = settings.admin_token.get_secret_value().strip() if settings.admin_token else ""
    return token or None


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
    """A Litestar guard: 403 when no admin token is configured, 401 for a missing or wrong one,
    or for more than one ``Authorization`` header."""
    settings: Settings = connection.app.state.settings
    expected = configured_admin_token(settings)
    if expected is None:
        raise PermissionDeniedException(
            "admin endpoints are disabled: set HEALTHDOCK_ADMIN_TOKEN to enable them"
        )
    headers = [value for name, value in connection.scope["headers"] if name == _AUTHORIZATION]
    if len(headers) > 1:
        # Ambiguous: a proxy in front may have checked another one than we would.
        raise NotAuthorizedException(
            "more than one Authorization header: send exactly one", headers=dict(_CHALLENGE)
        )
    presented = bearer_token(connection.headers.get("authorization"))
    if presented is None:
        raise NotAuthorizedException(
            "admin token required: send Authorization: Bearer <HEALTHDOCK_ADMIN_TOKEN>",
            headers=dict(_CHALLENGE),
        )
    if not token_matches(presented, expected):
        raise NotAuthorizedException("wrong admin token", headers=dict(_CHALLENGE))
