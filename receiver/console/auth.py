"""The console's sign-in, sessions, CSRF and headers.

- **Sign-in** with a token (named, or the bootstrap one); a ``feed`` token is for machines and
  has no console. Each attempt is audited (``console.login``, ok or denied). Failures are rate
  limited per client address: after ``_FAILURES`` in ``_FAILURE_WINDOW`` the client waits
  (429), audited too. A sign-in always starts a new session id (no session fixation).
- **Sessions** are server-side (``mirror.sessions``): the cookie holds a random id, ``HttpOnly``,
  ``SameSite=Strict``, ``Secure`` when the request came over HTTPS, path ``/console``. A session
  idle longer than ``HEALTHDOCK_CONSOLE_SESSION_MINUTES``, or whose token was revoked, is gone.
- **CSRF:** every form carries the session's token, compared in constant time; the sign-in
  form, before any session, a token from a cookie of its own (double submit).
- **Headers** on every console answer: ``Content-Security-Policy: default-src 'self'`` with
  ``frame-ancestors 'none'`` (no framing: clickjacking), ``X-Frame-Options: DENY``,
  ``nosniff``, ``no-referrer``, ``no-store``.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import secrets
import time
from collections import OrderedDict, deque
from datetime import timedelta
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.exceptions import HTTPException
from litestar.handlers.base import BaseRouteHandler
from sqlalchemy import Engine

from config import Settings
from mirror import (
    AuditAction,
    AuditOutcome,
    Role,
    audit,
    read_transaction,
    sessions,
    tokens,
    write_transaction,
)
from receiver.access import client_address, configured_admin_token, deny

SESSION_COOKIE = "hdm_session"
LOGIN_COOKIE = "hdm_login"
_PATH = "/console"
_FAILURES = 5
_FAILURE_WINDOW = 300.0  # seconds

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
        "object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class LoginRequired(HTTPException):
    """No live session: the console answers with the sign-in page's address."""

    status_code = 401


class ConsoleForbidden(HTTPException):
    """Signed in, but the role may not, or the form's CSRF token is wrong."""

    status_code = 403


class TooManyAttempts(HTTPException):
    status_code = 429


def _settings(connection: ASGIConnection[Any, Any, Any, Any]) -> Settings:
    settings: Settings = connection.app.state.settings
    return settings


def _engine(connection: ASGIConnection[Any, Any, Any, Any]) -> Engine:
    engine: Engine = connection.app.state.engine
    return engine


def idle_timeout(settings: Settings) -> timedelta:
    return timedelta(minutes=settings.console_session_minutes)


async def current_session(connection: ASGIConnection[Any, Any, Any, Any]) -> sessions.Session:
    """The request's live session (and its principal in ``state``), else LoginRequired."""
    session_id = connection.cookies.get(SESSION_COOKIE)
    if not session_id or len(session_id) > 128:
        raise LoginRequired()
    settings = _settings(connection)
    find = functools.partial(sessions.find_session, session_id=session_id,
                             idle=idle_timeout(settings),
                             bootstrap=configured_admin_token(settings))  # fmt: skip
    # A write transaction: finding a session may note that it was used.
    session = await asyncio.to_thread(write_transaction, _engine(connection), find)
    if session is None:
        raise LoginRequired()
    connection.state.principal = session.principal
    connection.state.session = session
    return session


def signed_in(role: Role) -> Any:
    """A guard: a live session whose principal holds ``role``."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        session = await current_session(connection)
        if not session.principal.may(role):
            await asyncio.to_thread(deny, connection, session.principal, f"needs {role}")
            raise ConsoleForbidden(detail=f"the {role} role is needed for this")

    guard.__name__ = f"signed_in_as_{role}"
    return guard


def check_csrf(request: Request[Any, Any, Any], presented: str | None) -> None:
    """The form's CSRF token must be the session's; a mismatch is refused (403)."""
    session: sessions.Session = request.state.session
    if not presented or not hmac.compare_digest(presented.encode(), session.csrf_token.encode()):
        deny(request, session.principal, "CSRF token missing or wrong")
        raise ConsoleForbidden(detail="the form's CSRF token is missing or wrong: reload the page")


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a console path only, never another site (an open
    redirect would lend a phishing link our address)."""
    if not value or len(value) > 512:
        return _PATH
    path = value.split("?", 1)[0]
    if path != _PATH and not path.startswith(_PATH + "/"):
        return _PATH
    if any(c in value for c in ("\\", "\r", "\n", "\t", "\x00")) or "//" in value:
        return _PATH
    if ".." in path.split("/") or "%2e" in path.lower() or "%2f" in path.lower():
        return _PATH
    return value


class LoginThrottle:
    """Sign-in attempts per client address in a sliding window (one receiver process).

    An attempt counts from before its token is looked up, so parallel guesses cannot all
    slip through while the first is still being checked; a success forgets the client's.
    """

    _CLIENTS = 10_000  # remembered at most: the least recently seen are forgotten first

    def __init__(self, limit: int = _FAILURES, window: float = _FAILURE_WINDOW) -> None:
        self._limit = limit
        self._window = window
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()
        self._refused: dict[str, float] = {}

    def _recent(self, client: str) -> deque[float]:
        attempts = self._attempts.setdefault(client, deque())
        self._attempts.move_to_end(client)
        cutoff = time.monotonic() - self._window
        while attempts and attempts[0] < cutoff:
            attempts.popleft()
        while len(self._attempts) > self._CLIENTS:
            self._attempts.popitem(last=False)
        return attempts

    def admit(self, client: str) -> bool:
        """Count an attempt: False when the client has used up its window already."""
        attempts = self._recent(client)
        if len(attempts) >= self._limit:
            return False
        attempts.append(time.monotonic())
        return True

    def first_refusal(self, client: str) -> bool:
        """Whether this refusal is the window's first (the only one the trail records)."""
        now = time.monotonic()
        noted = self._refused.get(client)
        if noted is not None and now - noted < self._window:
            return False
        self._refused[client] = now
        if len(self._refused) > self._CLIENTS:
            self._refused.clear()  # at worst, one more row per client
        return True

    def succeeded(self, client: str) -> None:
        self._attempts.pop(client, None)
        self._refused.pop(client, None)


def _audit(engine: Engine, entry: audit.AuditEntry) -> None:
    write_transaction(engine, functools.partial(audit.record_audit, entry=entry))


async def sign_in(
    request: Request[Any, Any, Any], presented: str, throttle: LoginThrottle
) -> tuple[str, sessions.Session] | str:
    """A new session for ``presented``: (cookie id, session); or why not (a message)."""
    engine, settings = _engine(request), _settings(request)
    client = client_address(request) or "unknown"
    if not throttle.admit(client):
        if throttle.first_refusal(client):
            # One row a window: a flood of guesses must not grow the trail without bound.
            entry = audit.AuditEntry("unknown", "-", AuditAction.CONSOLE_LOGIN, "throttled",
                                     client, AuditOutcome.DENIED)  # fmt: skip
            await asyncio.to_thread(_audit, engine, entry)
        raise TooManyAttempts(detail="too many failed sign-ins from here: wait a few minutes")
    find = functools.partial(tokens.authenticate, presented=presented.strip(),
                             bootstrap=configured_admin_token(settings))  # fmt: skip
    principal = await asyncio.to_thread(read_transaction, engine, find) if presented else None
    if principal is None or not principal.may(Role.VIEWER):
        actor = "unknown" if principal is None else principal.name
        role = "-" if principal is None else principal.role
        why = "unknown or revoked token" if principal is None else "no console role"
        entry = audit.AuditEntry(actor, role, AuditAction.CONSOLE_LOGIN, why, client,
                                 AuditOutcome.DENIED)  # fmt: skip
        await asyncio.to_thread(_audit, engine, entry)
        if principal is None:
            return "That token is unknown or revoked."
        return f"The token {principal.name!r} has the {principal.role} role: it has no console."
    throttle.succeeded(client)

    def start(connection: Any) -> tuple[str, sessions.Session]:
        started = sessions.start_session(connection, principal, client, idle_timeout(settings))
        audit.record_audit(connection, audit.AuditEntry(
            principal.name, principal.role, AuditAction.CONSOLE_LOGIN, None, client,
        ))  # fmt: skip
        return started

    return await asyncio.to_thread(write_transaction, engine, start)


def session_cookie(request: Request[Any, Any, Any], value: str, *, expire: bool = False) -> Cookie:
    return Cookie(
        key=SESSION_COOKIE, value="" if expire else value, path=_PATH, httponly=True,
        samesite="strict", secure=_settings(request).console_secure_cookies,
        max_age=0 if expire else None,
    )  # fmt: skip


def login_cookie(request: Request[Any, Any, Any]) -> tuple[str, Cookie]:
    """A fresh double-submit token for the sign-in form, and its cookie."""
    value = secrets.token_urlsafe(24)
    cookie = Cookie(key=LOGIN_COOKIE, value=value, path=_PATH, httponly=True, samesite="strict",
                    secure=_settings(request).console_secure_cookies, max_age=1800)  # fmt: skip
    return value, cookie


def login_csrf_ok(request: Request[Any, Any, Any], presented: str | None) -> bool:
    expected = request.cookies.get(LOGIN_COOKIE)
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


_ENCODED_HEADERS = [
    (name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()
]


async def add_security_headers(message: Any, scope: Any) -> None:
    """A ``before_send`` hook: every answer under /console gets the headers, pages and error
    pages alike (exception handlers' answers skip ``after_request``)."""
    if message["type"] != "http.response.start" or not scope.get("path", "").startswith(_PATH):
        return
    present = {name.lower() for name, _ in message.get("headers", [])}
    headers = list(message.get("headers", []))
    headers += [(name, value) for name, value in _ENCODED_HEADERS if name not in present]
    message["headers"] = headers
