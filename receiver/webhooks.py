"""``POST /webhooks/healthdock``: verify, store durably, apply, then acknowledge.

This is the hot path: headers are read straight from the ASGI scope and the answer is
encoded here, which keeps the per-request overhead close to a bare endpoint's.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request, post
from litestar.exceptions import HTTPException
from litestar.openapi.datastructures import ResponseSpec
from litestar.response.base import ASGIResponse

from config import Settings
from mirror.database import DatabaseUnavailable
from mirror.eventlog import WEBHOOK, IncomingEvent, dedup_key, storable_headers
from mirror.events import PayloadError, parse_event
from mirror.ingest import Receipt
from receiver.intake import Intake, IntakeClosed
from receiver.metrics import BAD_REQUEST, TOO_LARGE, UNAVAILABLE, Metrics
from receiver.signature import SIGNATURE_HEADER, SignatureError, verify

_SIGNATURE_HEADER = SIGNATURE_HEADER.lower().encode("latin-1")


class Acknowledgement(msgspec.Struct):
    """What became of the event: ``applied``, ``ignored``, ``failed`` or ``duplicate``."""

    seq: int | None
    status: str
    effect: str | None


class AcknowledgementEnvelope(msgspec.Struct):
    success: bool
    data: Acknowledgement


def _decode(body: bytes) -> object:
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise PayloadError("body is not valid JSON") from None


def _answer(receipt: Receipt) -> ASGIResponse:
    envelope = AcknowledgementEnvelope(
        True, Acknowledgement(receipt.seq, receipt.status, receipt.effect)
    )
    return ASGIResponse(body=msgspec.json.encode(envelope), media_type="application/json")


@post(
    "/webhooks/healthdock",
    status_code=200,
    summary="Receive a HealthDock webhook",
    description=(
        "Verifies the HMAC-SHA256 signature (X-HealthDock-Signature, or the body's signature "
        "member), stores the event durably and applies it to the mirror; 200 only after commit."
    ),
    tags=["webhooks"],
    responses={200: ResponseSpec(data_container=AcknowledgementEnvelope, description="Stored")},
)
async def receive_webhook(request: Request[Any, Any, Any]) -> ASGIResponse:
    arrived = time.perf_counter()
    metrics: Metrics = request.app.state.metrics
    try:
        event_type, receipt = await _receive(request)
    except SignatureError:
        metrics.signature_failed()
        raise
    except PayloadError:
        metrics.rejected(BAD_REQUEST)
        raise
    except HTTPException as error:
        if error.status_code == 413:
            metrics.rejected(TOO_LARGE)
        raise
    except (DatabaseUnavailable, IntakeClosed, TimeoutError):
        metrics.rejected(UNAVAILABLE)
        raise
    metrics.acknowledged(event_type, receipt.status, time.perf_counter() - arrived)
    return _answer(receipt)


async def _receive(request: Request[Any, Any, Any]) -> tuple[str, Receipt]:
    settings: Settings = request.app.state.settings
    intake: Intake = request.app.state.intake
    body = await request.body()
    raw_headers = list(request.scope["headers"])
    signature = next((v.decode("latin-1") for k, v in raw_headers if k == _SIGNATURE_HEADER), None)
    # Nothing in the body is trusted (or even parsed, for the header form) before this line.
    signed = verify(body, signature, settings.webhook_secrets)
    event = parse_event(_decode(body))
    item = IncomingEvent(
        source=WEBHOOK,
        dedup_key=dedup_key(event.event_id, signed),
        event=event,
        body=body,
        headers=storable_headers(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in raw_headers
        ),
        received_at=datetime.now(UTC),
    )
    return event.event_type, await intake.submit(item)
