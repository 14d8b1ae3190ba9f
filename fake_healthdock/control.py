"""The ``/_fake/`` endpoints: steer a running fake from outside (demos, benchmarks).

No API key, no rate limit, no faults. Guarded by ``Authorization: Bearer <control_token>``
when the fake has a control token; otherwise open (the fake listens on loopback).

- ``GET /_fake/faults``, ``PUT /_fake/faults`` (a JSON object of the fields to change)
- ``GET /_fake/webhooks``, ``PUT /_fake/webhooks`` (the webhook switches, likewise)
- ``POST /_fake/mutate`` with ``{"count": n}``: n random changes (each sends its webhook)
- ``GET /_fake/stats``: API, webhook and OAuth counters
- ``GET /_fake/truth``: how many patients and appointments exist now
- ``GET /_fake/oauth``: the authorization server's switches, stats and registered clients
  (never a token or a client secret); ``PUT /_fake/oauth`` changes the switches, as above
- ``POST /_fake/oauth/expire``: every live access token expires now, so the next API call
  with one gets 401 (refresh tokens stay valid); answers how many expired
"""

from __future__ import annotations

import hmac
from dataclasses import asdict
from typing import Any, TypeVar

import msgspec

from fake_healthdock.api import ApiError, Request, Response, invalid, success
from fake_healthdock.fake import FakeHealthDock
from fake_healthdock.faults import Faults
from fake_healthdock.oauth import OAuthServer, OAuthSwitches
from fake_healthdock.webhooks import WebhookSwitches

T = TypeVar("T", Faults, WebhookSwitches, OAuthSwitches)

_MAX_MUTATIONS = 10_000


def handle(fake: FakeHealthDock, request: Request) -> Response:
    if fake.control_token is not None:
        presented = request.headers.get("authorization", "")
        if not hmac.compare_digest(presented.encode(), f"Bearer {fake.control_token}".encode()):
            raise ApiError(401, "UNAUTHORIZED", "Invalid or missing control token")
    route = (request.method, request.path.rstrip("/"))
    if route == ("GET", "/_fake/faults"):
        return success(asdict(fake.faults))
    if route == ("PUT", "/_fake/faults"):
        fake.faults = _changed(fake.faults, request)
        return success(asdict(fake.faults))
    if route == ("GET", "/_fake/webhooks"):
        return success(asdict(fake.webhooks.switches))
    if route == ("PUT", "/_fake/webhooks"):
        fake.webhooks.switches = _changed(fake.webhooks.switches, request)
        return success(asdict(fake.webhooks.switches))
    if route == ("POST", "/_fake/mutate"):
        count = _object(request).get("count", 1)
        if type(count) is not int or not 0 <= count <= _MAX_MUTATIONS:
            raise invalid("count", f"Must be an integer from 0 to {_MAX_MUTATIONS}")
        changes = [
            {"event": change.event, "id": change.record.id, "timestamp": change.timestamp}
            for change in fake.mutate(count)
        ]
        return success({"changes": changes})
    if route == ("GET", "/_fake/stats"):
        return success(
            {
                "api": asdict(fake.stats),
                "webhooks": asdict(fake.webhooks.stats),
                "oauth": asdict(fake.oauth.stats),
            }
        )
    if route == ("GET", "/_fake/truth"):
        return success(fake.counts())
    if route == ("GET", "/_fake/oauth"):
        return success(_oauth(fake.oauth))
    if route == ("PUT", "/_fake/oauth"):
        fake.oauth.switches = _changed(fake.oauth.switches, request)
        return success(_oauth(fake.oauth))
    if route == ("POST", "/_fake/oauth/expire"):
        return success({"expired": fake.oauth.expire_access_tokens()})
    raise ApiError(404, "NOT_FOUND", "Resource not found")


def _oauth(server: OAuthServer) -> dict[str, Any]:
    """What a demo may see of the authorization server: nothing that would authenticate."""
    clients = [
        {
            "client_id": client.client_id,
            "redirect_uris": list(client.redirect_uris),
            "confidential": client.secret is not None,
        }
        for client in server.clients.values()
    ]
    return {"switches": asdict(server.switches), "stats": asdict(server.stats), "clients": clients}


def _changed(current: T, request: Request) -> T:
    try:
        return current.updated(_object(request))
    except ValueError as error:
        raise invalid("body", str(error)) from None


def _object(request: Request) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(request.body or b"{}")
    except msgspec.DecodeError:
        raise invalid("body", "Invalid JSON") from None
    if not isinstance(body, dict):
        raise invalid("body", "Must be a JSON object")
    return body
