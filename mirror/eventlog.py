"""The only writer of ``webhook_events``: every event ever received, verbatim.

Stored first, processed after: an event is inserted keyed on (source, dedup key), so a
redelivery finds its first copy and has no second effect.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.engine import Connection

from mirror.driver import Driver
from mirror.events import Event

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
    """What applying an event did."""

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


_COLUMNS = (
    "source", "dedup_key", "event_id", "event_type", "event_timestamp", "resource", "record_id",
    "version", "status", "effect", "error", "attempts", "received_at", "applied_at", "headers",
    "body",
)  # fmt: skip


@functools.lru_cache(maxsize=64)
def _insert_sql(rows: int) -> str:
    """One multi-row INSERT (so RETURNING says which rows were new) for ``rows`` events."""
    values = ", ".join(
        "(" + ", ".join(f":{name}_{i}" for name in _COLUMNS) + ")" for i in range(rows)
    )
    return (
        f"INSERT INTO webhook_events ({', '.join(_COLUMNS)}) VALUES {values} "
        "ON CONFLICT (source, dedup_key) DO NOTHING RETURNING seq, source, dedup_key"
    )


# Keeps one statement's parameters under SQLite's and PostgreSQL's limits.
_ROWS_PER_INSERT = 64


def stored_before(
    connection: Connection, incoming: Sequence[IncomingEvent]
) -> set[tuple[str, str]]:
    """The (source, dedup key) pairs of ``incoming`` that the event log already holds."""
    driver = Driver.of(connection)
    # Filtered by source too, so the lookup uses the (source, dedup_key) unique index.
    sql = (
        "SELECT source, dedup_key FROM webhook_events "
        f"WHERE source = :source AND {driver.id_list('dedup_key', 'keys')}"
    )
    found: set[tuple[str, str]] = set()
    for source in sorted({item.source for item in incoming}):
        keys = sorted({item.dedup_key for item in incoming if item.source == source})
        rows = driver.execute(connection, sql, {"source": source, "keys": driver.ids(keys)})
        found.update((row[0], row[1]) for row in rows)
    return found


def store_events(
    connection: Connection, incoming: Sequence[tuple[IncomingEvent, Outcome]]
) -> dict[tuple[str, str], int]:
    """Insert events with their outcome, unless stored before; return new ``seq`` by key."""
    driver = Driver.of(connection)
    now = driver.timestamp(datetime.now(UTC))
    stored: dict[tuple[str, str], int] = {}
    for start in range(0, len(incoming), _ROWS_PER_INSERT):
        chunk = incoming[start : start + _ROWS_PER_INSERT]
        params: dict[str, object] = {}
        for i, (item, outcome) in enumerate(chunk):
            write = item.event.write
            row = (
                item.source,
                item.dedup_key,
                item.event.event_id,
                item.event.event_type,
                item.event.timestamp,
                write.resource.value if write else None,
                write.record_id if write else None,
                write.version.key if write else None,
                outcome.status,
                outcome.effect,
                outcome.error,
                0 if outcome.status == PENDING else 1,
                driver.timestamp(item.received_at),
                now if outcome.status in (APPLIED, IGNORED) else None,
                driver.json([list(pair) for pair in item.headers]),
                item.body,
            )
            params.update({f"{name}_{i}": value for name, value in zip(_COLUMNS, row, strict=True)})
        result = driver.execute(connection, _insert_sql(len(chunk)), params)
        stored.update({(new[1], new[2]): new[0] for new in result})
    return stored
