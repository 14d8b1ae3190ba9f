"""The only writer of ``webhook_events``: every event ever received, verbatim.

Stored first, processed after: an event is inserted keyed on (source, dedup key), so a
redelivery finds its first copy and has no second effect.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import bindparam, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from mirror.events import Event
from mirror.schema import webhook_events

PENDING = "pending"
APPLIED = "applied"
IGNORED = "ignored"
FAILED = "failed"

WEBHOOK = "webhook"
RECONCILE = "reconcile"

# Headers that could carry credentials are never stored.
_UNSTORED_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """An event to store and apply, with the bytes and headers it arrived with."""

    source: str
    dedup_key: str
    event: Event
    body: bytes
    headers: Sequence[tuple[str, str]]
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying a stored event did."""

    seq: int
    status: str
    effect: str | None = None
    error: str | None = None


def dedup_key(event_id: str | None, signed_content: bytes) -> str:
    """The body ``id`` when present, else a digest of the signed content."""
    if event_id is not None:
        return f"id:{event_id}"
    return f"sha256:{hashlib.sha256(signed_content).hexdigest()}"


def storable_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in headers if name.lower() not in _UNSTORED_HEADERS]


def store_events(
    connection: Connection, incoming: Sequence[IncomingEvent]
) -> dict[tuple[str, str], int]:
    """Insert events not stored before; return the new ones' ``seq`` by (source, dedup key)."""
    if not incoming:
        return {}
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(webhook_events)
        .on_conflict_do_nothing(index_elements=["source", "dedup_key"])
        .returning(webhook_events.c.seq, webhook_events.c.source, webhook_events.c.dedup_key)
    )
    rows = [
        {
            "source": item.source,
            "dedup_key": item.dedup_key,
            "event_id": item.event.event_id,
            "event_type": item.event.event_type,
            "event_timestamp": item.event.timestamp,
            "resource": item.event.write.resource.value if item.event.write else None,
            "record_id": item.event.write.record_id if item.event.write else None,
            "version": item.event.write.version.key if item.event.write else None,
            "status": PENDING,
            "attempts": 0,
            "received_at": item.received_at,
            "headers": [list(pair) for pair in item.headers],
            "body": item.body,
        }
        for item in incoming
    ]
    result = connection.execute(statement, rows)
    return {(row.source, row.dedup_key): row.seq for row in result}


def record_outcomes(connection: Connection, outcomes: Sequence[Outcome]) -> None:
    """Set each event's status and effect, counting the attempt."""
    if not outcomes:
        return
    now = datetime.now(UTC)
    statement = (
        update(webhook_events)
        .where(webhook_events.c.seq == bindparam("b_seq"))
        .values(
            status=bindparam("b_status"),
            effect=bindparam("b_effect"),
            error=bindparam("b_error"),
            applied_at=bindparam("b_applied_at"),
            attempts=webhook_events.c.attempts + 1,
        )
    )
    params: list[Mapping[str, object]] = [
        {
            "b_seq": outcome.seq,
            "b_status": outcome.status,
            "b_effect": outcome.effect,
            "b_error": outcome.error,
            "b_applied_at": now if outcome.status in (APPLIED, IGNORED) else None,
        }
        for outcome in outcomes
    ]
    connection.execute(statement, params)
