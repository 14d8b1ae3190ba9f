"""The change feed: every stored event exactly once, in an order that concurrent writers
cannot break. Read-only.

A position in the feed is ``(txid, seq)``. On SQLite every writer holds the database's one
write lock (``BEGIN IMMEDIATE``) from its first insert to its commit, so ``seq`` is assigned in
commit order and the position is ``(0, seq)``.

On PostgreSQL ``seq`` comes from a sequence, taken at insert time: a transaction that inserted
``seq = 10`` can commit after another that inserted ``seq = 11``. A reader at ``seq > 9`` that
saw 11 first would move past 10 and never return it. So each row carries the id of the
transaction that wrote it (``txid``, see ``mirror.eventlog``) and the feed is ordered by
``(txid, seq)``, but only rows with ``txid`` below the snapshot's ``xmin`` are read: every
transaction below that horizon has ended, and every transaction that starts later gets a
larger id, so the part of the log below the horizon never changes again. A cursor into it
cannot skip or repeat. The price: a writer transaction that stays open (anywhere on the
server: transaction ids are cluster-wide) holds the horizon back, and the feed returns fewer
events, never wrong ones, until it ends.

The order is therefore that of the writers' transaction ids: a total order that agrees with
commit order for transactions that did not overlap. Events of one record carry ``version``,
the order that matters for that record.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import Engine, Row, func, literal, not_, select, text, tuple_
from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import ColumnElement

from config import MirrorError
from mirror.database import as_utc, unavailable_as_error
from mirror.events import nested_too_deep
from mirror.schema import webhook_events

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# A type filter examines at most this many events a request, so a rare type costs bounded work;
# the cursor still moves past every event examined.
FILTER_SCAN_ROWS = 10_000
START_CURSOR = "0"

_BIGINT_MAX = 2**63 - 1
_CURSOR = re.compile(r"(0|[1-9][0-9]{0,18})\.([1-9][0-9]{0,18})")
# Every transaction below this id has ended. Under REPEATABLE READ it describes the snapshot
# that all of the read's statements see.
_HORIZON = text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")


_Row = Row[*tuple[Any, ...]]


class FeedError(MirrorError, ValueError):
    """A request the feed cannot answer (a garbled or unknown cursor, a bad limit)."""


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where an event stands in the feed; encoded as an opaque cursor."""

    txid: int
    seq: int


_START = Position(0, 0)


def encode_cursor(position: Position) -> str:
    return START_CURSOR if position == _START else f"{position.txid}.{position.seq}"


def decode_cursor(cursor: str | None) -> Position:
    """The position of a cursor that :func:`encode_cursor` made; absent or ``0``: the start."""
    if cursor is None or cursor == START_CURSOR:
        return _START
    match = _CURSOR.fullmatch(cursor)
    if match is None or max(int(match[1]), int(match[2])) > _BIGINT_MAX:
        raise FeedError("cursor is not one this feed issued: pass a next_cursor, or 0")
    return Position(int(match[1]), int(match[2]))


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One stored event as the feed presents it."""

    seq: int
    source: str
    event_type: str
    event_id: str | None
    resource: str | None
    record_id: str | None
    version: str | None
    status: str
    effect: str | None
    received_at: datetime
    event_timestamp: str
    payload: Any  # the body as received, decoded; None once pruned, or if nested too deep


@dataclass(frozen=True, slots=True)
class FeedPage:
    events: list[FeedEvent]
    next_cursor: str  # where the next read starts; the same cursor when nothing was new
    has_more: bool  # more events can be read right away from next_cursor


@dataclass(frozen=True, slots=True)
class FeedBatch:
    """Events in feed order, each with its own cursor: where a reader that stopped just after
    it would start again (what a publisher writes into each message)."""

    events: list[FeedEvent]
    cursors: list[str]
    next_cursor: str


@dataclass(frozen=True, slots=True)
class Backlog:
    """What a reader at some cursor has not read yet."""

    events: int
    oldest_received_at: datetime | None


@contextlib.contextmanager
def _snapshot(engine: Engine) -> Iterator[tuple[Connection, int | None]]:
    """A read transaction and, on PostgreSQL, its horizon (see _HORIZON): one snapshot for
    both. SQLite: a read transaction that does not take the write lock."""
    postgres = engine.dialect.name == "postgresql"
    options: dict[str, Any] = (
        {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        if postgres
        else {"sqlite_begin": "DEFERRED"}
    )
    with (
        unavailable_as_error(),
        engine.connect().execution_options(**options) as connection,
        connection.begin(),
    ):
        yield connection, connection.execute(_HORIZON).scalar_one() if postgres else None


def read_batch(engine: Engine, cursor: str | None, *, limit: int = DEFAULT_LIMIT) -> FeedBatch:
    """Up to ``limit`` events after ``cursor``, as :func:`read_feed` returns them, with the
    cursor after each."""
    if not 1 <= limit <= MAX_LIMIT:
        raise FeedError(f"limit must be between 1 and {MAX_LIMIT}")
    after = decode_cursor(cursor)
    with _snapshot(engine) as (connection, horizon):
        if after != _START and not _issued(connection, after):
            raise FeedError("unknown cursor: pass a next_cursor this feed issued, or 0")
        rows = _positions(connection, after, horizon, limit)
        cursors = [encode_cursor(Position(row.txid or 0, row.seq)) for row in rows]
        events = _events(connection, [row.seq for row in rows])
    return FeedBatch(events, cursors, cursors[-1] if cursors else encode_cursor(after))


def is_issued(connection: Connection, cursor: str) -> bool:
    """Whether ``cursor`` is one this feed issued (the start, or an event's position here)."""
    try:
        position = decode_cursor(cursor)
    except FeedError:
        return False
    return position == _START or _issued(connection, position)


def cursor_after(engine: Engine, cursor: str, events: int) -> str:
    """The cursor ``events`` events after ``cursor`` (or the feed's end, if fewer follow)."""
    while events > 0:
        batch = read_batch(engine, cursor, limit=min(events, MAX_LIMIT))
        if not batch.events:
            break
        cursor, events = batch.next_cursor, events - len(batch.events)
    return cursor


def is_after(cursor: str, other: str) -> bool:
    """Whether ``cursor`` stands later in the feed than ``other`` (both issued cursors)."""
    return decode_cursor(cursor) > decode_cursor(other)


def backlog(connection: Connection, cursor: str) -> Backlog:
    """How many stored events stand after ``cursor``, and when the oldest of them arrived."""
    query = select(func.count(), func.min(webhook_events.c.received_at)).where(
        _beyond(connection, decode_cursor(cursor))
    )
    count, oldest = connection.execute(query).one()
    return Backlog(int(count), None if oldest is None else as_utc(oldest))


def count_between(connection: Connection, earlier: str, later: str) -> int:
    """How many stored events stand after ``earlier`` up to ``later`` (two feed cursors)."""
    last = decode_cursor(later)
    query = select(func.count()).where(
        _beyond(connection, decode_cursor(earlier)), not_(_beyond(connection, last))
    )
    return int(connection.execute(query).scalar_one())


def _beyond(connection: Connection, after: Position) -> ColumnElement[bool]:
    """Events after ``after`` in feed order (as the (txid, seq) index serves it)."""
    columns = webhook_events.c
    if connection.dialect.name == "postgresql":
        # Every row has a txid (its default; older rows were given 0 by the migration).
        return tuple_(columns.txid, columns.seq) > tuple_(literal(after.txid), literal(after.seq))
    return columns.seq > after.seq


def read_feed(
    engine: Engine,
    cursor: str | None = None,
    *,
    limit: int = DEFAULT_LIMIT,
    event_types: Collection[str] = (),
    scan_rows: int = FILTER_SCAN_ROWS,
) -> FeedPage:
    """Up to ``limit`` events after ``cursor`` (of ``event_types``, when given)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise FeedError(f"limit must be between 1 and {MAX_LIMIT}")
    after = decode_cursor(cursor)
    with _snapshot(engine) as (connection, horizon):
        if after != _START and not _issued(connection, after):
            raise FeedError("unknown cursor: pass a next_cursor this feed issued, or 0")
        scan = max(limit, scan_rows) if event_types else limit
        examined = _positions(connection, after, horizon, scan + 1)
        return _page(connection, after, examined, limit, scan, frozenset(event_types))


def _issued(connection: Connection, position: Position) -> bool:
    """Every cursor but the start names an event the feed returned (or passed over)."""
    found = connection.execute(
        select(literal(1)).where(
            webhook_events.c.seq == position.seq,
            func.coalesce(webhook_events.c.txid, 0) == position.txid,
        )
    )
    return found.first() is not None


def _positions(
    connection: Connection, after: Position, horizon: int | None, count: int
) -> Sequence[_Row]:
    """The next ``count`` events' positions and types after ``after``, in feed order."""
    columns = webhook_events.c
    query = select(columns.seq, columns.txid, columns.event_type)
    if horizon is None:
        query = query.where(columns.seq > after.seq).order_by(columns.seq)
    else:
        # Rows written before the txid column existed were backfilled with 0 by the migration.
        query = query.where(
            tuple_(columns.txid, columns.seq) > tuple_(literal(after.txid), literal(after.seq)),
            columns.txid < horizon,
        ).order_by(columns.txid, columns.seq)
    return connection.execute(query.limit(count)).all()


def _page(
    connection: Connection,
    after: Position,
    examined: Sequence[_Row],
    limit: int,
    scan: int,
    event_types: frozenset[str],
) -> FeedPage:
    chosen: list[int] = []
    last = after
    for index, row in enumerate(examined[:scan]):
        last = Position(row.txid or 0, row.seq)
        if event_types and row.event_type not in event_types:
            continue
        chosen.append(row.seq)
        if len(chosen) == limit:
            return FeedPage(
                _events(connection, chosen), encode_cursor(last), index + 1 < len(examined)
            )
    return FeedPage(_events(connection, chosen), encode_cursor(last), len(examined) > scan)


def _events(connection: Connection, seqs: list[int]) -> list[FeedEvent]:
    if not seqs:
        return []
    columns = webhook_events.c
    rows = connection.execute(
        select(
            columns.seq,
            columns.source,
            columns.event_type,
            columns.event_id,
            columns.resource,
            columns.record_id,
            columns.version,
            columns.status,
            columns.effect,
            columns.received_at,
            columns.event_timestamp,
            columns.body,
        ).where(columns.seq.in_(seqs))
    )
    by_seq = {row.seq: row for row in rows}
    return [_event(by_seq[seq]) for seq in seqs]


def _event(row: _Row) -> FeedEvent:
    return FeedEvent(
        seq=row.seq,
        source=row.source,
        event_type=row.event_type,
        event_id=row.event_id,
        resource=row.resource,
        record_id=row.record_id,
        version=row.version,
        status=row.status,
        effect=row.effect,
        received_at=as_utc(row.received_at),
        event_timestamp=row.event_timestamp,
        payload=_payload(row.body),
    )


def _payload(body: bytes | None) -> Any:
    if body is None:
        return None
    try:
        payload = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        # Only verified JSON bodies are stored; should one not decode, the feed must not stall
        # on it, and the event's other fields still say what happened.
        return None
    # Nor on one stored before the receiver refused deep nesting (or by a reconcile pass):
    # its answer would be nested deeper still, past what the response encoder can recurse.
    return None if nested_too_deep(payload) else payload
