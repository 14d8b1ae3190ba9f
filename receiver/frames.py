"""The committer's wire format: what the receiver and its committer process say to each other.

Each message is a msgspec Struct encoded as msgpack; array-like (fields by position, no names on
the wire) because a batch of 256 events crosses the pipe thousands of times a second. Both
sides encode and decode with the functions here alone, so a field added on one side cannot be
missed on the other.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from mirror import Action, Event, IncomingEvent, RecordWrite, Resource


class WriteFrame(msgspec.Struct, array_like=True, frozen=True):
    """The record write the receiver parsed from an event."""

    resource: Resource
    record_id: str
    action: Action
    version: str
    fields: dict[str, Any] | None


class EventFrame(msgspec.Struct, array_like=True, frozen=True):
    """One verified event, parsed once by the receiver and not again by the committer."""

    source: str
    dedup_key: str
    body: bytes
    headers: list[tuple[str, str]]
    received_at: float  # POSIX seconds
    event_id: str | None
    event_type: str
    timestamp: str
    write: WriteFrame | None
    unreadable: str | None  # why a verified body could not be read as an event


class Ready(msgspec.Struct, array_like=True, frozen=True, tag=True):
    """The committer has its engine and takes batches."""


class Receipt(msgspec.Struct, array_like=True, frozen=True):
    seq: int | None
    status: str
    effect: str | None


class Committed(msgspec.Struct, array_like=True, frozen=True, tag=True):
    """The batch committed: one receipt per event, in order."""

    receipts: list[Receipt]


class Unavailable(msgspec.Struct, array_like=True, frozen=True, tag=True):
    """Nothing of the batch was committed: the database is unavailable."""

    reason: str


Answer = Ready | Committed | Unavailable

_ENCODER = msgspec.msgpack.Encoder()
_BATCH = msgspec.msgpack.Decoder(list[EventFrame])
_ANSWER = msgspec.msgpack.Decoder(Answer)


def frame_of(item: IncomingEvent) -> EventFrame:
    event, write = item.event, item.event.write
    return EventFrame(
        item.source,
        item.dedup_key,
        item.body,
        list(item.headers),
        item.received_at.timestamp(),
        event.event_id,
        event.event_type,
        event.timestamp,
        None
        if write is None
        else WriteFrame(
            write.resource, write.record_id, write.action, write.version, _plain(write.fields)
        ),
        item.unreadable,
    )


def incoming_of(frame: EventFrame) -> IncomingEvent:
    """The event the receiver verified and parsed, rebuilt without parsing it again."""
    write = frame.write
    record_write = (
        None
        if write is None
        else RecordWrite(write.resource, write.record_id, write.action, write.version, write.fields)
    )
    return IncomingEvent(
        frame.source,
        frame.dedup_key,
        Event(frame.event_id, frame.event_type, frame.timestamp, record_write),
        frame.body,
        frame.headers,
        datetime.fromtimestamp(frame.received_at, UTC),
        frame.unreadable,
    )


def _plain(fields: Any) -> dict[str, Any] | None:
    return fields if fields is None or isinstance(fields, dict) else dict(fields)


def encode_batch(frames: list[EventFrame]) -> bytes:
    return _ENCODER.encode(frames)


def decode_batch(payload: bytes) -> list[EventFrame]:
    return _BATCH.decode(payload)


def encode_answer(answer: Answer) -> bytes:
    return _ENCODER.encode(answer)


def decode_answer(payload: bytes) -> Answer:
    return _ANSWER.decode(payload)
