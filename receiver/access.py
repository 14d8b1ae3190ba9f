"""Who may call what: named tokens with roles, the bootstrap token, and audit before data leaves.

Every admin and feed endpoint takes ``Authorization: Bearer <token>``: a named token
(``healthdock-mirror token create NAME --role ...``) or the bootstrap token
``HEALTHDOCK_ADMIN_TOKEN``, which holds every role. Missing, unknown or revoked: 401 with a
``WWW-Authenticate`` challenge; a role that may not: 403. Both with the error envelope, and the
token is never logged or echoed. A revoked token is refused at its very next request: every
request looks the token up.

:func:`audited` writes the audit row of a request that returns patient data, and commits it,
before the handler's answer is sent: a read the database could not record is refused (503).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import SecurityRequirement, SecurityScheme
from sqlalchemy import Engine
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from config import Settings
from mirror import (
    AuditAction,
    AuditOutcome,
    DatabaseUnavailable,
    Role,
    audit,
    read_transaction,
    tokens,
    write_transaction,
)

log = logging.getLogger(__name__)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="healthdock-mirror"'}
_AUTHORIZATION = b"authorization"  # ASGI header names are lower case

# For the OpenAPI document: the scheme (in components) and what each guarded operation declares.
TOKEN_SCHEME = "apiToken"  # noqa: S105 (the scheme's name in the document)
TOKEN_SECURITY_SCHEME = SecurityScheme(
    type="http",
    scheme="bearer",
    description=(
        "`Authorization: Bearer <token>`: a named token (`healthdock-mirror token create`) "
        "whose role allows the operation, or `$HEALTHDOCK_ADMIN_TOKEN`"
    ),
)
TOKEN_SECURITY: list[SecurityRequirement] = [{TOKEN_SCHEME: []}]


def configured_admin_token(settings: Settings) -> str | None:
    """The bootstrap token, or None when it is unset or blank (nobody could present a blank
    bearer token, so a blank one lets no one in, as no token does)."""
    token = settings.admin_token.get_secret_value().strip() if settings.admin_token else ""
    return token or None


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    client = connection.scope.get("client")
    return None if not client else str(client[0])


async def _principal(connection: ASGIConnection[Any, Any, Any, Any]) -> tokens.Principal:
    headers = [value for name, value in connection.scope["headers"] if name == _AUTHORIZATION]
    if len(headers) > 1:
        # Ambiguous: a proxy in front may have checked another one than we would.
        raise NotAuthorizedException(
            "more than one Authorization header: send exactly one", headers=dict(_CHALLENGE)
        )
    presented = bearer_token(connection.headers.get("authorization"))
    if presented is None:
        raise NotAuthorizedException(
            "a token is required: send Authorization: Bearer <token>", headers=dict(_CHALLENGE)
        )
    settings: Settings = connection.app.state.settings
    engine: Engine = connection.app.state.engine
    bootstrap = configured_admin_token(settings)
    principal = tokens.bootstrap_principal(presented, bootstrap)
    if principal is None:
        find = functools.partial(tokens.authenticate, presented=presented, bootstrap=None)
        principal = await asyncio.to_thread(read_transaction, engine, find)
    if principal is None:
        raise NotAuthorizedException("unknown or revoked token", headers=dict(_CHALLENGE))
    return principal


def require_role(*roles: Role) -> Callable[..., Any]:
    """A Litestar guard: the request's token must hold one of ``roles``; the principal is then
    in ``request.state.principal``."""
    needed = " or ".join(roles)

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = await _principal(connection)
        if not any(principal.may(role) for role in roles):
            await asyncio.to_thread(deny, connection, principal, f"needs {needed}")
            raise PermissionDeniedException(
                f"the token {principal.name!r} ({principal.role}) may not do this: "
                f"it needs the {needed} role"
            )
        connection.state.principal = principal

    guard.__name__ = f"require_{'_or_'.join(roles)}"
    return guard


def deny(
    connection: ASGIConnection[Any, Any, Any, Any], principal: tokens.Principal, why: str
) -> None:
    """Record a refusal of a known principal (its role may not, or a bad CSRF token)."""
    target = f"{connection.scope.get('method', '')} {connection.url.path[:200]}: {why}"
    entry = audit.AuditEntry(principal.name, principal.role, AuditAction.ACCESS_DENIED, target,
                             client_address(connection), AuditOutcome.DENIED)  # fmt: skip
    engine: Engine = connection.app.state.engine
    try:
        write_transaction(engine, functools.partial(audit.record_audit, entry=entry))
    except (SQLAlchemyError, DatabaseUnavailable) as error:
        # The refusal stands either way; only that it could not be recorded is logged.
        log.error("audit: a refusal could not be written (%s)", type(error).__name__)


def audited(
    connection: ASGIConnection[Any, Any, Any, Any],
    action: str,
    *targets: str | None,
    outcome: AuditOutcome = AuditOutcome.OK,
) -> None:
    """Append the request's audit rows (one per target: a long list of ids takes several) and
    commit them together, in the calling thread (the handlers that return patient data run in
    one). Raises DatabaseUnavailable (503) when it cannot."""
    principal: tokens.Principal = connection.state.principal
    client = client_address(connection)
    entries = [audit.AuditEntry(principal.name, principal.role, action, target, client, outcome)
               for target in targets or (None,)]  # fmt: skip
    engine: Engine = connection.app.state.engine

    def record(database: Connection) -> None:
        for entry in entries:
            audit.record_audit(database, entry)

    try:
        write_transaction(engine, record)
    except SQLAlchemyError as error:
        # Whatever the database's reason, the read is not answered unrecorded; only the
        # error's type is logged (a driver's message can quote the statement).
        log.error("audit: the row for %s could not be written (%s)", action, type(error).__name__)
        raise DatabaseUnavailable("the audit trail could not be written: try again") from None
