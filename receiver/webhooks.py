"""``POST /webhooks/healthdock``: verify, store durably, apply, then acknowledge."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request, post

from config import Settings
from mirror.eventlog import WEBHOOK, IncomingEvent, dedup_key, storable_headers
from mirror.events import PayloadError, parse_event
from receiver.intake import Intake
from receiver.signature import SIGNATURE_HEADER, verify


def _decode(body: bytes) -> object:
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise PayloadError("body is not valid JSON") from None


@post(
    "/webhooks/healthdock",
    status_code=200,
    summary="Receive a HealthDock webhook",
    description=(
        "Verifies the HMAC-SHA256 signature (X-HealthDock-Signature or the body's signature "
        "member), stores the event durably and applies it to the mirror. 2xx only after commit."
    ),
    tags=["webhooks"],
)
async def receive_webhook(request: Request[Any, Any, Any]) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    intake: Intake = request.app.state.intake
    body = await request.body()
    # Nothing in the body is trusted (or even parsed, for the header form) before this line.
    signed = verify(body, request.headers.get(SIGNATURE_HEADER), settings.webhook_secrets)
    event = parse_event(_decode(body))
    item = IncomingEvent(
        source=WEBHOOK,
        dedup_key=dedup_key(event.event_id, signed),
        event=event,
        body=body,
        headers=storable_headers(request.headers.items()),
        received_at=datetime.now(UTC),
    )
    async with asyncio.timeout(settings.request_timeout_seconds):
        receipt = await intake.submit(item)
    return {
        "success": True,
        "data": {"seq": receipt.seq, "status": receipt.status, "effect": receipt.effect},
    }
