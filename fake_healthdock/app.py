"""The fake as an ASGI application: routing, authentication, rate limits and faults.

``/v1`` takes the fake's API key or a live OAuth access token; ``/oauth/`` is the
authorization server (:mod:`fake_healthdock.oauth`), outside the API's rate limit and faults.

A plain ASGI callable rather than a framework app, because the faults live on the wire:
dropping a connection unanswered or sending a body shorter than promised is easier without a
framework's response machinery in the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from fake_healthdock import api, control, oauth
from fake_healthdock.api import ApiError, Request, Response
from fake_healthdock.connection import drop_connection
from fake_healthdock.fake import FakeHealthDock
from fake_healthdock.mutations import churn
from fake_healthdock.oauth import AccessCheck

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES = 1 << 20
_SHUTDOWN_DRAIN_SECONDS = 2.0
_SERVER_ERRORS = {
    500: ("INTERNAL_ERROR", "Server error, please retry"),
    502: ("BAD_GATEWAY", "Bad gateway, please retry"),
    503: ("SERVICE_UNAVAILABLE", "Service unavailable, please retry"),
}


def create_app(fake: FakeHealthDock, *, mutations_per_second: float = 0.0) -> FakeApp:
    """The HTTP face of ``fake``. When served with a lifespan (uvicorn), it starts the webhook
    worker and, if ``mutations_per_second`` > 0, a stream of random changes."""
    return FakeApp(fake, mutations_per_second)


class FakeApp:
    def __init__(self, fake: FakeHealthDock, mutations_per_second: float) -> None:
        self.fake = fake
        self.mutations_per_second = mutations_per_second

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            request = await _read(scope, receive)
        except ApiError as error:
            await _send(send, error.response())
            return
        if request.path == "/_fake" or request.path.startswith("/_fake/"):
            try:
                response = control.handle(self.fake, request)
            except ApiError as error:
                response = error.response()
        elif request.path in oauth.PATHS:
            reply = oauth.handle(self.fake.oauth, request, _origin(scope, request.headers))
            response = Response(reply.status, reply.body, reply.headers)
        else:
            try:
                answer = await self._api(request)
            finally:
                self.fake.stats.finished += 1
            if answer is None:
                return  # the connection was dropped
            response = answer
        await _send(send, response)

    async def _api(self, request: Request) -> Response | None:
        fake = self.fake
        fake.stats.requests += 1
        verdict = fake.dice.roll(fake.faults)
        if verdict.spike:
            fake.stats.spikes += 1
        if verdict.delay:
            await asyncio.sleep(verdict.delay)
        if verdict.reset:
            fake.stats.resets += 1
            await drop_connection()
            return None
        token = _bearer(request.headers)
        access = fake.oauth.check(token)
        if verdict.storm and fake.storm.begin(fake.faults.storm_seconds):
            fake.stats.storms += 1
        # During a storm someone else has used the window up: our own budget is not touched.
        storm = fake.storm.refusal(None if fake.limiter is None else fake.limiter.limit)
        budget = _budget(token, access)
        quota = storm or (None if fake.limiter is None else fake.limiter.take(budget))
        try:
            if storm is not None:
                fake.stats.stormed += 1
                details = {"retry_after": storm.retry_after}
                raise ApiError(429, "RATE_LIMITED", "Rate limit exceeded", details)
            if quota is not None and not quota.allowed:
                fake.stats.rate_limited += 1
                details = {"retry_after": quota.retry_after}
                raise ApiError(429, "RATE_LIMITED", "Rate limit exceeded", details)
            if access is not None and access.refusal is not None:
                fake.stats.unauthorized += 1
                fake.oauth.stats.invalid_tokens += 1
                raise _InvalidToken(401, "UNAUTHORIZED", access.refusal)
            if access is None and not hmac.compare_digest(token.encode(), fake.api_key.encode()):
                fake.stats.unauthorized += 1
                raise ApiError(401, "UNAUTHORIZED", "Invalid or missing API key")
            if verdict.error_status is not None:
                fake.stats.errors += 1
                raise ApiError(verdict.error_status, *_SERVER_ERRORS[verdict.error_status])
            response = api.handle(fake, request, drift=verdict.drift)
        except ApiError as error:
            response = error.response()
        if quota is not None:
            response.headers.extend(quota.headers())
        if verdict.truncate_fraction is not None and len(response.body) > 1:
            fake.stats.truncated += 1
            length = len(response.body)
            cut = int(length * verdict.truncate_fraction)
            response.body = response.body[: min(length - 1, max(1, cut))]
        return response

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        churning: asyncio.Task[None] | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.fake.webhooks.start()
                if self.mutations_per_second > 0:
                    changes = churn(self.fake.mutate, self.mutations_per_second)
                    churning = asyncio.create_task(changes)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if churning is not None:
                    churning.cancel()
                    await asyncio.gather(churning, return_exceptions=True)
                with contextlib.suppress(TimeoutError):
                    await self.fake.webhooks.drain(within=_SHUTDOWN_DRAIN_SECONDS)
                await self.fake.webhooks.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


class _InvalidToken(ApiError):
    """An expired or revoked access token: the reference's 401, plus the challenge an OAuth
    client reads to know it should refresh (RFC 6750 §3.1)."""

    def response(self) -> Response:
        response = super().response()
        response.headers.append(("WWW-Authenticate", 'Bearer error="invalid_token"'))
        return response


def _budget(token: str, access: AccessCheck | None) -> str:
    """The rate limiter's key: the API key itself, or an OAuth token's client, so that a
    refresh (a new token) does not hand the client a fresh budget."""
    return token if access is None else f"oauth-client:{access.client_id}"


def _origin(scope: Scope, headers: Mapping[str, str]) -> str:
    """``scheme://host`` the request was sent to: the authorization server's issuer."""
    host = headers.get("host")
    if not host:
        server_host, port = scope.get("server") or ("localhost", None)
        host = server_host if port is None else f"{server_host}:{port}"
    return f"{scope.get('scheme', 'http')}://{host}"


def _bearer(headers: Mapping[str, str]) -> str:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def _read(scope: Scope, receive: Receive) -> Request:
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "PAYLOAD_TOO_LARGE", f"Body over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    query = scope.get("query_string", b"").decode("latin-1")
    return Request(
        method=scope["method"],
        path=scope["path"],
        query=dict(reversed(parse_qsl(query, keep_blank_values=True))),
        headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
        body=b"".join(chunks),
    )


async def _send(send: Send, response: Response) -> None:
    headers = [(b"content-length", str(len(response.body)).encode())]
    if response.body:  # every answer but a redirect or a revocation's empty 200 is JSON
        headers.insert(0, (b"content-type", b"application/json"))
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
