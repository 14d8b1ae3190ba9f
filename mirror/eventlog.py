"""The only writer and reader of ``webhook_events``: every event ever received, verbatim.

An event is keyed on (source, dedup key): a redelivery finds its first copy and has no second
effect. Its row is inserted once, with its outcome, in the same transaction that applies it
(``mirror.ingest``), so an event is never stored without its effect nor applied without its
row; an event that could not be read or applied is stored ``failed``, for replay.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import msgspec
from sqlalchemy import ColumnElement, bindparam, case, func, select, text, update
from sqlalchemy.engine import Connection

from mirror.database import as_utc
from mirror.driver import JSON_ROWS, Driver, encode_rows, json_rows
from mirror.events import Event, RecordWrite, Resource
from mirror.schema import UNSETTLED_EVENTS, webhook_events
from mirror.states import UNSETTLED, Effect, EventSource, EventStatus
from mirror.versions import VersionKey

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
    # Why a verified body could not be read as an event: it is stored as failed, for replay.
    unreadable: str | None = None


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


# The event a reconcile records for what its write did: named by the change it found.
_RECONCILE_EVENT_OF_EFFECT = {
    Effect.CREATED: "created",
    Effect.UPDATED: "updated",
    Effect.RESTORED: "updated",
    Effect.DELETED: "deleted",
}


def reconcile_event(
    run_id: int, write: RecordWrite, effect: Effect, received_at: datetime
) -> IncomingEvent | None:
    """The event that puts a change a reconcile pass found into the log (None: no change).

    Its body reads like a webhook's, so the feed and replay treat it as one, but its write was
    HealthDock's record as of ``updated_at`` (an update): the stored version keeps that, and
    :func:`stored_write` gives it back.
    """
    change = _RECONCILE_EVENT_OF_EFFECT.get(effect)
    if change is None:
        return None
    event_type = f"{write.resource.value}.{change}"
    timestamp = VersionKey(write.version).instant
    body = msgspec.json.encode(
        {
            "event": event_type,
            "timestamp": timestamp,
            "data": write.fields or {"id": write.record_id},
        }
    )
    return IncomingEvent(
        source=EventSource.RECONCILE,
        dedup_key=f"run:{run_id}:{write.resource.value}:{write.record_id}:{write.version}",
        event=Event(None, event_type, timestamp, write),
        body=body,
        headers=[],
        received_at=received_at,
    )


def replay_event(
    seq: int, event: Event, write: RecordWrite, body: bytes, received_at: datetime
) -> IncomingEvent:
    """The event that puts into the log a change an operator's replay of event ``seq`` made,
    so that the change feed has it: the replayed body, as the write it made."""
    return IncomingEvent(
        source=EventSource.REPLAY,
        dedup_key=f"replay:{seq}:{write.version}",
        event=Event(None, event.event_type, event.timestamp, write),
        body=body,
        headers=[],
        received_at=received_at,
    )


def stored_write(source: str, version: str | None, event: Event) -> RecordWrite | None:
    """The write a stored event makes, as when it was first stored: a reconcile event's is the
    one its stored version names (see :func:`reconcile_event`)."""
    write = event.write
    if write is not None and source == EventSource.RECONCILE and version:
        return dataclasses.replace(write, action=VersionKey(version).action, version=version)
    return write


def storable_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in headers if name.lower() not in _UNSTORED_HEADERS]


_COLUMNS = (
    ("source", "text"), ("dedup_key", "text"), ("event_id", "text"), ("event_type", "text"),
    ("event_timestamp", "text"), ("resource", "text"), ("record_id", "text"),
    ("version", "text"), ("status", "text"), ("effect", "text"), ("error", "text"),
    ("attempts", "smallint"), ("received_at", "timestamptz"), ("applied_at", "timestamptz"),
    ("headers", "json"), ("body", "bytea"),
)  # fmt: skip
_NAMES = [name for name, _ in _COLUMNS]
assert _NAMES[-1] == "body", "_json_row hexes the body by its place: last"
_RETURNING = "ON CONFLICT (dedup_key, source) DO NOTHING RETURNING seq, source, dedup_key"
# PostgreSQL: one statement over the rows as one JSON document (mirror.driver.json_rows),
# whatever their number; the body travels as hex. Each row also records its transaction's id,
# which orders the change feed (mirror.feed).
_JSON_COLUMNS = [(name, "text" if kind == "bytea" else kind) for name, kind in _COLUMNS]
_SELECTED = [f"decode(v.{name}, 'hex')" if kind == "bytea" else name for name, kind in _COLUMNS]
_INSERT_JSON = (
    f"INSERT INTO webhook_events ({', '.join(_NAMES)}, txid) "
    f"SELECT {', '.join(_SELECTED)}, pg_current_xact_id()::text::bigint "
    f"FROM {json_rows(_JSON_COLUMNS)} {_RETURNING}"
)


@functools.lru_cache(maxsize=64)
def _insert_values(rows: int) -> str:
    """SQLite: one multi-row INSERT (so RETURNING says which rows were new) for ``rows`` rows.

    Its parameters are positional (``Driver.execute_positional``): by name, binding 1,024 of
    them cost more than the insert itself.
    """
    row = "(" + ", ".join("?" for _ in _NAMES) + ")"
    values = ", ".join(row for _ in range(rows))
    return f"INSERT INTO webhook_events ({', '.join(_NAMES)}) VALUES {values} {_RETURNING}"


# Keeps one SQLite statement's parameters under its limit.
_ROWS_PER_INSERT = 64


def stored_before(
    connection: Connection, incoming: Sequence[IncomingEvent]
) -> set[tuple[str, str]]:
    """The (source, dedup key) pairs of ``incoming`` that the event log already holds."""
    driver = Driver.of(connection)
    # The (dedup_key, source) unique index answers this lookup.
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
    # In key order, as every writer does: two receivers storing the same redeliveries wait on
    # each other's keys in one order and cannot deadlock.
    ordered = sorted(incoming, key=lambda pair: (pair[0].source, pair[0].dedup_key))
    rows = [_row(driver, item, outcome, now) for item, outcome in ordered]
    if not rows:
        return {}
    if driver.postgres:
        document = encode_rows([_json_row(row) for row in rows])
        results = [driver.execute(connection, _INSERT_JSON, {JSON_ROWS: document})]
    else:
        results = []
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            params = [value for row in chunk for value in row]
            results.append(
                driver.execute_positional(connection, _insert_values(len(chunk)), params)
            )
    return {(new[1], new[2]): new[0] for result in results for new in result}


def _row(driver: Driver, item: IncomingEvent, outcome: Outcome, now: object) -> tuple[object, ...]:
    write = item.event.write
    return (
        item.source,
        item.dedup_key,
        item.event.event_id,
        item.event.event_type,
        item.event.timestamp,
        write.resource.value if write else None,
        write.record_id if write else None,
        write.version if write else None,
        outcome.status,
        outcome.effect,
        outcome.error,
        0 if outcome.status == EventStatus.PENDING else 1,
        driver.timestamp(item.received_at),
        now if outcome.status in (EventStatus.APPLIED, EventStatus.IGNORED) else None,
        driver.json([list(pair) for pair in item.headers]),
        item.body,
    )


def _json_row(row: tuple[object, ...]) -> tuple[object, ...]:
    """A row of :func:`_row` as :data:`_INSERT_JSON` reads it: the body (its last value) in hex."""
    body = row[-1]
    hexed = body.hex() if isinstance(body, bytes | bytearray | memoryview) else None
    return (*row[:-1], hexed)


# --- replay outcomes and payload retention ------------------------------------------------

_MAX_ATTEMPTS = 32767  # the column is a SMALLINT: the count stops there instead of failing


def _next_attempt() -> ColumnElement[int]:
    attempts = webhook_events.c.attempts
    return case((attempts < _MAX_ATTEMPTS, attempts + 1), else_=attempts)


def record_replays(connection: Connection, outcomes: Sequence[tuple[int, Outcome]]) -> None:
    """Record what replaying each event (by ``seq``) did; every replay counts an attempt.

    An event that applies (or is ignored) loses its old error; one that fails again stays
    ``failed`` with the new error, and keeps its last effect and applied_at.
    """
    now = datetime.now(UTC)
    settled = [
        {"seq_": seq, "status_": outcome.status, "effect_": outcome.effect}
        for seq, outcome in outcomes
        if outcome.status != EventStatus.FAILED
    ]
    failed = [
        {"seq_": seq, "error_": outcome.error}
        for seq, outcome in outcomes
        if outcome.status == EventStatus.FAILED
    ]
    by_seq = webhook_events.c.seq == bindparam("seq_")
    if settled:
        connection.execute(
            update(webhook_events)
            .where(by_seq)
            .values(
                status=bindparam("status_"),
                effect=bindparam("effect_"),
                error=None,
                applied_at=now,
                attempts=_next_attempt(),
            ),
            settled,
        )
    if failed:
        connection.execute(
            update(webhook_events)
            .where(by_seq)
            .values(status=EventStatus.FAILED, error=bindparam("error_"), attempts=_next_attempt()),
            failed,
        )


def record_identities(connection: Connection, identified: Sequence[tuple[int, Event]]) -> None:
    """Fill in what each event (by ``seq``) is, for events stored before they could be read."""
    rows = [
        {
            "seq_": seq,
            "event_type_": event.event_type,
            "event_timestamp_": event.timestamp,
            "resource_": event.write.resource.value if event.write else None,
            "record_id_": event.write.record_id if event.write else None,
            "version_": event.write.version if event.write else None,
        }
        for seq, event in identified
    ]
    if rows:
        connection.execute(
            update(webhook_events)
            .where(webhook_events.c.seq == bindparam("seq_"))
            .values(
                event_type=bindparam("event_type_"),
                event_timestamp=bindparam("event_timestamp_"),
                resource=bindparam("resource_"),
                record_id=bindparam("record_id_"),
                version=bindparam("version_"),
            ),
            rows,
        )


def _prunable(cutoff: datetime) -> list[ColumnElement[bool]]:
    """Applied events settled before ``cutoff`` whose payload is still kept.

    Failed, pending and ignored events keep theirs: an operator may still replay them.
    """
    c = webhook_events.c
    return [
        c.status == EventStatus.APPLIED,
        c.body.is_not(None),
        func.coalesce(c.applied_at, c.received_at) < cutoff,
        # Implied by the line above (an event is applied after it is received); lets the
        # database use the received_at index.
        c.received_at < cutoff,
    ]


def prunable_events(connection: Connection, cutoff: datetime, after: int, limit: int) -> list[int]:
    """The next ``limit`` events (by ``seq`` after ``after``) whose payload retention removes."""
    query = (
        select(webhook_events.c.seq)
        .where(webhook_events.c.seq > after, *_prunable(cutoff.astimezone(UTC)))
        .order_by(webhook_events.c.seq)
        .limit(limit)
    )
    return [int(seq) for seq in connection.execute(query).scalars()]


def prune_payloads(connection: Connection, seqs: Sequence[int], cutoff: datetime) -> int:
    """Remove the raw payload of those of ``seqs`` still prunable; return how many."""
    if not seqs:
        return 0
    result = connection.execute(
        update(webhook_events)
        .where(webhook_events.c.seq.in_(seqs), *_prunable(cutoff.astimezone(UTC)))
        .values(body=None, body_pruned_at=datetime.now(UTC))
    )
    return int(result.rowcount)


# --- reads: what status, /metrics and the demo ask of the event log -------------------------

# The partial index's predicate, literally: a query written any other way (bound parameters)
# is one the database cannot prove the index covers, and scans the table.
_UNSETTLED = text(UNSETTLED_EVENTS)


@dataclass(frozen=True, slots=True)
class EventCounts:
    """Events received since some moment, counted three ways."""

    by_status: dict[str, int]  # every status of EventStatus, 0 when there is none
    by_type: dict[str, int]  # only the types received, by name
    by_source: dict[str, int]  # every source of EventSource


def event_counts(connection: Connection, since: datetime) -> EventCounts:
    c = webhook_events.c
    by_status = dict.fromkeys(map(str, EventStatus), 0)
    by_source = dict.fromkeys(map(str, EventSource), 0)
    by_type: dict[str, int] = {}
    rows = connection.execute(
        select(c.source, c.status, c.event_type, func.count())
        .where(c.received_at >= since)
        .group_by(c.source, c.status, c.event_type)
    )
    for source, status, event_type, count in rows:
        by_status[status] = by_status.get(status, 0) + count
        by_source[source] = by_source.get(source, 0) + count
        by_type[event_type] = by_type.get(event_type, 0) + count
    return EventCounts(by_status, dict(sorted(by_type.items())), by_source)


def unsettled_counts(connection: Connection) -> dict[str, int]:
    """Events waiting for an operator, by status (each of ``UNSETTLED``, 0 when none)."""
    counts = dict.fromkeys(map(str, UNSETTLED), 0)
    rows = connection.execute(
        select(webhook_events.c.status, func.count())
        .where(_UNSETTLED)
        .group_by(webhook_events.c.status)
    )
    for status, count in rows:
        counts[status] = int(count)
    return counts


@dataclass(frozen=True, slots=True)
class UnsettledEvent:
    """An event waiting for an operator (pending or failed), without its payload."""

    seq: int
    source: str
    event_type: str
    status: str
    received_at: datetime
    attempts: int
    error: str | None


def oldest_unsettled(connection: Connection) -> UnsettledEvent | None:
    c = webhook_events.c
    row = connection.execute(
        select(c.seq, c.source, c.event_type, c.status, c.received_at, c.attempts, c.error)
        .where(_UNSETTLED)
        .order_by(c.received_at, c.seq)
        .limit(1)
    ).first()
    if row is None:
        return None
    return UnsettledEvent(int(row.seq), row.source, row.event_type, row.status,
                          as_utc(row.received_at), int(row.attempts), row.error)  # fmt: skip


def last_received(connection: Connection, source: EventSource) -> datetime | None:
    """When the latest event from ``source`` was received."""
    # Walks the received_at index from the newest end to the first event from the source.
    received_at = connection.execute(
        select(webhook_events.c.received_at)
        .where(webhook_events.c.source == source)
        .order_by(webhook_events.c.received_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    return None if received_at is None else as_utc(received_at)


def event_count(connection: Connection, source: EventSource | None = None) -> int:
    """Every event in the log (from ``source`` only, when given)."""
    query = select(func.count()).select_from(webhook_events)
    if source is not None:
        query = query.where(webhook_events.c.source == source)
    return int(connection.execute(query).scalar_one())


# --- reads for the console: events by filter, one event, one record's timeline ---------------


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What the console's events page filters on (each None: any); ``before``: keyset page."""

    status: str | None = None
    source: str | None = None
    event_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None

    def as_form(self) -> dict[str, object]:
        return {"status": self.status, "source": self.source, "event_type": self.event_type,
                "before": self.before}  # fmt: skip


@dataclass(frozen=True, slots=True)
class EventSummary:
    """An event's metadata: never its payload."""

    seq: int
    source: str
    event_type: str
    resource: str | None
    record_id: str | None
    version: str | None
    status: str
    effect: str | None
    received_at: datetime
    attempts: int
    error: str | None


@dataclass(frozen=True, slots=True)
class EventDetail:
    summary: EventSummary
    event_id: str | None
    event_timestamp: str
    applied_at: datetime | None
    body_bytes: int | None  # None once retention removed it
    headers: list[tuple[str, str]]

    @property
    def pruned(self) -> bool:
        return self.body_bytes is None


def _summary_columns() -> list[ColumnElement[object]]:
    c = webhook_events.c
    return [c.seq, c.source, c.event_type, c.resource, c.record_id, c.version, c.status,
            c.effect, c.received_at, c.attempts, c.error]  # fmt: skip


def _summary(row: Any) -> EventSummary:
    """An EventSummary from a row of ``_summary_columns()``: the same fields, in order."""
    summary = EventSummary(*row)
    return dataclasses.replace(summary, received_at=as_utc(summary.received_at))


def list_events(connection: Connection, filters: EventFilter, limit: int) -> list[EventSummary]:
    """Events matching every filter, the newest first (by seq: a keyset, ``before``)."""
    c = webhook_events.c
    query = select(*_summary_columns()).order_by(c.seq.desc()).limit(limit)
    if filters.status is not None:
        # The unsettled states literally, so the partial index serves the common filter.
        unsettled = filters.status in set(map(str, UNSETTLED))
        query = (
            query.where(_UNSETTLED, c.status == filters.status)
            if unsettled
            else query.where(c.status == filters.status)
        )
    if filters.source is not None:
        query = query.where(c.source == filters.source)
    if filters.event_type is not None:
        query = query.where(c.event_type == filters.event_type)
    if filters.since is not None:
        query = query.where(c.received_at >= filters.since)
    if filters.until is not None:
        query = query.where(c.received_at < filters.until)
    if filters.before is not None:
        query = query.where(c.seq < filters.before)
    return [_summary(row) for row in connection.execute(query)]


def record_timeline(
    connection: Connection, resource: Resource, record_id: str, limit: int
) -> list[EventSummary]:
    """The events that wrote one record, oldest first (the resource, record_id index)."""
    c = webhook_events.c
    query = (
        select(*_summary_columns())
        .where(c.resource == resource.value, c.record_id == record_id)
        .order_by(c.seq)
        .limit(limit)
    )
    return [_summary(row) for row in connection.execute(query)]


def event_detail(connection: Connection, seq: int) -> EventDetail | None:
    c = webhook_events.c
    row = connection.execute(
        select(*_summary_columns(), c.event_id, c.event_timestamp, c.applied_at,
               func.length(c.body), c.headers).where(c.seq == seq)
    ).first()  # fmt: skip
    if row is None:
        return None
    summary = _summary(row[:11])
    event_id, event_timestamp, applied_at, length, headers = row[11:]
    stored_headers = cast(list[list[str]], headers or [])
    return EventDetail(
        summary,
        None if event_id is None else str(event_id),
        str(event_timestamp),
        None if applied_at is None else as_utc(cast(datetime, applied_at)),
        None if length is None else int(cast(int, length)),
        [(str(k), str(v)) for k, v in stored_headers],
    )


def event_body(connection: Connection, seq: int) -> bytes | None:
    """The event's raw payload (patient data: its caller audits), None once pruned."""
    body = connection.execute(
        select(webhook_events.c.body).where(webhook_events.c.seq == seq)
    ).scalar_one_or_none()
    return None if body is None else bytes(body)


def events_per_hour(connection: Connection, since: datetime) -> list[tuple[datetime, str, int]]:
    """(hour, source, events received in it) from ``since`` on, hours in UTC."""
    c = webhook_events.c
    if connection.dialect.name == "postgresql":
        hour: ColumnElement[object] = func.date_trunc("hour", func.timezone("UTC", c.received_at))
    else:
        # SQLite keeps naive UTC text, 'YYYY-MM-DD HH:MM:SS...': its first 13 characters.
        hour = func.substr(c.received_at, 1, 13)
    rows = connection.execute(
        select(hour, c.source, func.count()).where(c.received_at >= since).group_by(hour, c.source)
    )
    found = []
    for moment, source, count in rows:
        if isinstance(moment, str):
            moment = datetime.strptime(moment, "%Y-%m-%d %H")
        assert isinstance(moment, datetime)
        found.append((moment.replace(tzinfo=UTC), str(source), int(count)))
    return found
