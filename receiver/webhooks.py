"""``POST /webhooks/healthdock``: verify, store durably, apply, then acknowledge.

This is the hot path: headers are read straight from the ASGI scope and the answer is
encoded here, which keeps the per-request overhead close to a bare endpoint's.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request, post
from litestar.exceptions import ClientException, HTTPException, InternalServerException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.openapi.spec import Parameter as OpenAPIParameter
from litestar.response.base import ASGIResponse

from config import Settings
from mirror import (
    DatabaseUnavailable,
    EventSource,
    IncomingEvent,
    PayloadError,
    Receipt,
    dedup_key,
    read_event,
    storable_headers,
    unreadable_event,
)
from receiver.errors import error_responses
from receiver.intake import Intake, IntakeClosed
from receiver.metrics import BAD_REQUEST, TOO_LARGE, UNAVAILABLE, Metrics
from receiver.signature import SIGNATURE_HEADER, SignatureError, verify

_SIGNATURE_HEADER = SIGNATURE_HEADER.lower().encode("latin-1")
# Smaller bodies (HealthDock's usual ones) take microseconds to verify: a thread hop would cost
# more than it frees.
_VERIFY_INLINE_BYTES = 64 * 1024


class Acknowledgement(msgspec.Struct):
    """What became of the event: ``applied``, ``ignored``, ``failed`` or ``duplicate``."""

    seq: int | None
    status: str
    effect: str | None


class AcknowledgementEnvelope(msgspec.Struct):
    success: bool
    data: Acknowledgement


def _string(
    description: str, *, min_length: int | None = None, max_length: int | None = None
) -> Schema:
    return Schema(
        type=OpenAPIType.STRING,
        description=description,
        min_length=min_length,
        max_length=max_length,
    )


# The handler reads the raw bytes (they are what is signed), so Litestar cannot describe the
# body from a type: it is described here.
_EVENT = Schema(
    type=OpenAPIType.OBJECT,
    required=["event", "timestamp", "data"],
    properties={
        "id": Schema(
            one_of=[
                _string("the event's id; a redelivery carries the same", max_length=128),
                Schema(type=OpenAPIType.INTEGER),
                Schema(type=OpenAPIType.NULL),
            ]
        ),
        "event": _string(
            "the event type, e.g. patient.created; unknown types are stored and ignored",
            min_length=1,
            max_length=64,
        ),
        "timestamp": _string("when it happened upstream, ISO 8601", max_length=64),
        "data": Schema(
            type=OpenAPIType.OBJECT,
            description="the record, keyed by patient_id / appointment_id (or id)",
        ),
        "signature": _string("the compatibility form's signature, when there is no header"),
    },
)


@dataclass
class _WebhookOperation(Operation):
    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=_EVENT)}, required=True
        )
        self.parameters = [
            *(self.parameters or []),
            OpenAPIParameter(
                name=SIGNATURE_HEADER,
                param_in="header",
                schema=_string("sha256=<hex HMAC-SHA256 of the raw body>"),
                description="absent: the body's signature member is checked instead",
            ),
        ]


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
    operation_class=_WebhookOperation,
    responses={
        200: ResponseSpec(
            data_container=AcknowledgementEnvelope, generate_examples=False, description="Stored"
        ),
        **error_responses(400, 401, 413, 503),
    },
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
        elif error.status_code == 400:
            metrics.rejected(BAD_REQUEST)
        raise
    except (DatabaseUnavailable, IntakeClosed, TimeoutError):
        metrics.rejected(UNAVAILABLE)
        raise
    metrics.acknowledged(event_type, receipt.status, time.perf_counter() - arrived)
    return _answer(receipt)


async def _read_body(request: Request[Any, Any, Any]) -> bytes:
    try:
        return await request.body()
    except InternalServerException:
        # Litestar's word for a client that went away before its body was complete: a 5xx
        # would count a client's doing as our failure.
        raise ClientException("the request body ended before it was complete") from None


async def _receive(request: Request[Any, Any, Any]) -> tuple[str, Receipt]:
    settings: Settings = request.app.state.settings
    intake: Intake = request.app.state.intake
    body = await _read_body(request)
    raw_headers = list(request.scope["headers"])
    signatures = [value for name, value in raw_headers if name == _SIGNATURE_HEADER]
    if len(signatures) > 1:
        # Ambiguous: a proxy in front may have checked another one than we would.
        raise SignatureError(f"more than one {SIGNATURE_HEADER} header")
    signature = signatures[0].decode("latin-1") if signatures else None
    # Nothing in the body is trusted (or even parsed, for the header form) before this line.
    if len(body) > _VERIFY_INLINE_BYTES:
        # HMAC releases the GIL: while a large body is hashed, other requests are served.
        signed = await asyncio.to_thread(verify, body, signature, settings.webhook_secrets)
    else:
        signed = verify(body, signature, settings.webhook_secrets)
    unreadable = None
    try:
        event = read_event(body)
    except PayloadError as error:
        # HealthDock's own bytes, whatever they hold: a 4xx would make it give up on them and
        # nobody would see them. Stored as failed, they wait for an operator and a replay.
        event, unreadable = unreadable_event(body), str(error)
    item = IncomingEvent(
        source=EventSource.WEBHOOK,
        dedup_key=dedup_key(event.event_id, signed),
        event=event,
        body=body,
        headers=storable_headers(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in raw_headers
        ),
        received_at=datetime.now(UTC),
        unreadable=unreadable,
    )
    return event.event_type, await intake.submit(item)
