"""Driving the fake in tests: an in-process API client and a tiny webhook receiver."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import httpx

from fake_healthdock import FakeHealthDock, create_app

API_KEY = "test-api-key"
SECRET = "test-webhook-secret"
WEBHOOK_URL = "http://mirror.test/webhooks/healthdock"

MakeFake = Callable[..., FakeHealthDock]


class Receiver:
    """An ASGI webhook endpoint: records each delivery, answers the next of ``statuses``
    (200 once they run out)."""

    def __init__(self, statuses: Iterable[int] = ()) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self._statuses = list(statuses)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.deliveries.append((headers, body))
        status = self._statuses.pop(0) if self._statuses else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.deliveries]


def client(fake: FakeHealthDock, api_key: str | None = API_KEY) -> httpx.AsyncClient:
    """An API client talking to ``fake`` in process."""
    headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(create_app(fake)),
        base_url="http://healthdock.test",
        headers=headers,
    )


def with_receiver(make_fake: MakeFake, receiver: Receiver, **overrides: Any) -> FakeHealthDock:
    return make_fake(
        webhook_url=WEBHOOK_URL,
        webhook_transport=httpx.ASGITransport(receiver),
        **overrides,
    )
