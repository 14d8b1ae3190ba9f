"""Replay: re-apply stored events to the mirror, for operators.

Events are selected from the event log (time range, type, status, source, id), read in
batches by ``seq`` (memory stays flat however many match), and applied through
:func:`mirror.records.apply_writes` like any arriving event, so the ordering guard decides:
an old event never rolls a record back, it comes out ``stale``. Each batch is one
transaction; an event that raises is isolated so the rest of its batch applies. Every
replayed event's outcome is recorded on its row (``mirror.eventlog.record_replays``).

A dry run is the same code inside one transaction that is rolled back at the end, so a dry
run and a real run cannot disagree, even when several selected events touch one record. The
price: a dry run is one write transaction for as long as it runs (SQLite's write lock, so
webhooks wait and may get 503; PostgreSQL row locks on the touched records). Narrow it with
selectors.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, Row, func, or_, select
from sqlalchemy.engine import Connection

from config import MirrorError
from mirror.database import DatabaseUnavailable, read_transaction, unavailable_as_error
from mirror.eventlog import (
    Outcome,
    record_identities,
    record_replays,
    replay_event,
    store_events,
    stored_write,
)
from mirror.events import Event, PayloadError, RecordWrite, Resource, read_event
from mirror.guard import RecordState, merge
from mirror.records import apply_writes
from mirror.schema import MIRRORED_TABLES, webhook_events
from mirror.states import Effect, EventSource, EventStatus

log = logging.getLogger(__name__)

STATUSES = tuple(EventStatus)
# A replay's own events record what it changed: they are fed, never replayed again.
REPLAYABLE_SOURCES = (EventSource.WEBHOOK, EventSource.RECONCILE)
REPLAY_SKIPPED = "skipped"
"""Not a stored status: the event's payload was removed by retention, so it cannot replay."""

DEFAULT_BATCH_SIZE = 200


class SelectionError(MirrorError, ValueError):
    """A replay selection that cannot be run; the message says what to change."""


@dataclass(frozen=True, slots=True)
class Selection:
    """Which stored events to replay. Selectors combine with AND; ``seqs`` and ``event_ids``
    with OR between them (either names an event)."""

    since: datetime | None = None  # received at or after (inclusive)
    until: datetime | None = None  # received before (exclusive)
    event_types: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    source: str | None = None
    seqs: tuple[int, ...] = ()
    event_ids: tuple[str, ...] = ()
    everything: bool = False

    @property
    def has_selectors(self) -> bool:
        return any(
            (self.since, self.until, self.event_types, self.statuses, self.source, self.seqs,
             self.event_ids)
        )  # fmt: skip

    def validate(self) -> None:
        if not self.has_selectors and not self.everything:
            raise SelectionError(
                "say which events to replay (--since/--until, --type, --status, --source, "
                "--seq, --event-id), or --all for every stored event"
            )
        if self.has_selectors and self.everything:
            raise SelectionError("--all replays every stored event: leave out the selectors")
        unknown = sorted(set(self.statuses) - set(STATUSES))
        if unknown:
            raise SelectionError(f"unknown status {unknown[0]!r}; use one of {', '.join(STATUSES)}")
        if self.source is not None and self.source not in REPLAYABLE_SOURCES:
            raise SelectionError(f"unknown source {self.source!r}; use webhook or reconcile")
        for moment in (self.since, self.until):
            if moment is not None and moment.tzinfo is None:
                raise SelectionError("--since/--until must carry a time zone (UTC if unsure)")

    def conditions(self) -> list[ColumnElement[bool]]:
        c = webhook_events.c
        conditions: list[ColumnElement[bool]] = []
        if self.since is not None:
            conditions.append(c.received_at >= self.since.astimezone(UTC))
        if self.until is not None:
            conditions.append(c.received_at < self.until.astimezone(UTC))
        if self.event_types:
            conditions.append(c.event_type.in_(self.event_types))
        if self.statuses:
            conditions.append(c.status.in_(self.statuses))
        if self.source is not None:
            conditions.append(c.source == self.source)
        named = []
        if self.seqs:
            named.append(c.seq.in_(self.seqs))
        if self.event_ids:
            named.append(c.event_id.in_(self.event_ids))
        if named:
            conditions.append(or_(*named))
        return conditions


@dataclass(frozen=True, slots=True)
class ReplayedEvent:
    """What replaying one event did (or, in a dry run, would do)."""

    seq: int
    event_type: str
    resource: str | None
    record_id: str | None
    previous_status: str
    previous_error: str | None
    status: str  # applied, ignored, failed, or skipped (payload pruned)
    effect: str | None = None  # the guard's: created, updated, deleted, restored, stale
    fields: tuple[str, ...] = ()  # names of the record's fields that changed, never values
    error: str | None = None

    @property
    def outcome(self) -> str:
        """One word: the effect of an applied event, else its status."""
        return self.effect if self.status == EventStatus.APPLIED and self.effect else self.status


@dataclass(slots=True)
class ReplaySummary:
    dry_run: bool
    counts: Counter[str] = field(default_factory=Counter)  # by ReplayedEvent.outcome

    @property
    def events(self) -> int:
        return sum(self.counts.values())

    @property
    def failed(self) -> int:
        return self.counts[EventStatus.FAILED]


def count_selected(connection: Connection, selection: Selection) -> int:
    """How many stored events the selection names (validated first)."""
    selection.validate()
    query = select(func.count()).select_from(webhook_events).where(*selection.conditions())
    return int(connection.execute(query).scalar_one())


def replay(
    engine: Engine,
    selection: Selection,
    *,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_event: Callable[[ReplayedEvent], None] | None = None,
) -> ReplaySummary:
    """Replay the selected events in ``seq`` order; ``on_event`` hears of each one.

    Events stored after the replay began are left alone (the receiver applies them). A real
    run commits batch by batch: if the database goes away midway (DatabaseUnavailable), the
    batches before stay replayed and recorded.
    """
    selection.validate()
    if batch_size < 1:
        raise SelectionError("the batch size must be at least 1")
    summary = ReplaySummary(dry_run)
    conditions = selection.conditions()
    last = read_transaction(engine, _last_seq)

    def report(results: Sequence[ReplayedEvent]) -> None:
        for result in results:
            summary.counts[result.outcome] += 1
            if on_event is not None:
                on_event(result)

    if dry_run:
        with unavailable_as_error(), engine.connect() as connection:
            transaction = connection.begin()
            try:
                after = 0
                while rows := _next_batch(connection, conditions, after, last, batch_size):
                    report(_replay_batch(connection, rows))
                    after = rows[-1].seq
            finally:
                transaction.rollback()
        return summary

    after = 0
    while True:
        next_batch = functools.partial(
            _next_batch, conditions=conditions, after=after, last=last, limit=batch_size
        )
        rows = read_transaction(engine, next_batch)
        if not rows:
            return summary
        with unavailable_as_error(), engine.begin() as connection:
            results = _replay_batch(connection, rows)
        report(results)
        after = rows[-1].seq


def _last_seq(connection: Connection) -> int:
    return int(connection.execute(select(func.max(webhook_events.c.seq))).scalar() or 0)


_BATCH_COLUMNS = [
    webhook_events.c[name]
    for name in (
        "seq", "source", "event_type", "status", "error", "resource", "record_id", "version",
        "body",
    )
]  # fmt: skip


def _next_batch(
    connection: Connection,
    conditions: Sequence[ColumnElement[bool]],
    after: int,
    last: int,
    limit: int,
) -> list[Row[Any]]:
    c = webhook_events.c
    query = (
        select(*_BATCH_COLUMNS)
        .where(c.seq > after, c.seq <= last, *conditions)
        .order_by(c.seq)
        .limit(limit)
    )
    return list(connection.execute(query))


def _replay_batch(connection: Connection, rows: Sequence[Row[Any]]) -> list[ReplayedEvent]:
    """Apply one batch inside the caller's transaction and record each event's outcome."""
    writes: dict[int, RecordWrite] = {}
    events: dict[int, Event] = {}
    bodies: dict[int, bytes] = {}
    decided: dict[int, Outcome] = {}
    identified: list[tuple[int, Event]] = []
    for row in rows:
        if row.body is None:
            continue
        try:
            event, write = _write_of(row)
        except PayloadError as error:
            decided[row.seq] = Outcome(EventStatus.FAILED, error=f"payload: {error}")
            continue
        if row.event_type != event.event_type or (write is not None and row.resource is None):
            # Stored as unreadable when it arrived; now it is read, its row says what it is.
            identified.append((row.seq, event))
        if write is None:
            decided[row.seq] = Outcome(EventStatus.IGNORED)
        else:
            writes[row.seq] = write
            events[row.seq], bodies[row.seq] = event, row.body
    states = _record_states(connection, list(writes.values()))
    applied = dict(zip(writes, _apply(connection, list(writes.values())), strict=True))
    record_replays(connection, [*decided.items(), *applied.items()])
    record_identities(connection, identified)
    # What changed the mirror enters the log (and so the change feed) as a replay event.
    now = datetime.now(UTC)
    changes = [
        (replay_event(seq, events[seq], writes[seq], bodies[seq], now), outcome)
        for seq, outcome in applied.items()
        if outcome.status == EventStatus.APPLIED and outcome.effect != Effect.STALE
    ]
    store_events(connection, changes)

    results = []
    for row in rows:
        base = dict(
            seq=row.seq, event_type=row.event_type, resource=row.resource,
            record_id=row.record_id, previous_status=row.status, previous_error=row.error,
        )  # fmt: skip
        if row.body is None:
            results.append(ReplayedEvent(**base, status=REPLAY_SKIPPED, error="payload pruned"))
            continue
        outcome = decided.get(row.seq) or applied[row.seq]
        changed: tuple[str, ...] = ()
        write = writes.get(row.seq)
        if write is not None and outcome.status == EventStatus.APPLIED:
            changed = _changed_fields(states, write, outcome.effect)
        if outcome.status == EventStatus.FAILED:
            log.error("replaying event %d failed: %s", row.seq, outcome.error)
        results.append(
            ReplayedEvent(
                **base,
                status=outcome.status,
                effect=outcome.effect,
                fields=changed,
                error=outcome.error,
            )
        )
    return results


def _write_of(row: Row[Any]) -> tuple[Event, RecordWrite | None]:
    """The stored event, and the write it makes as when it first arrived (None: unknown type)."""
    event = read_event(row.body)
    return event, stored_write(row.source, row.version, event)


def _apply(connection: Connection, writes: Sequence[RecordWrite]) -> list[Outcome]:
    """Apply ``writes`` in a savepoint; if that raises, one by one, so only the culprit fails."""
    if not writes:
        return []
    try:
        with unavailable_as_error(), connection.begin_nested():
            return [
                Outcome(EventStatus.APPLIED, effect) for effect in apply_writes(connection, writes)
            ]
    except DatabaseUnavailable:
        raise
    except Exception as error:
        # Only the type: an exception's text can carry the statement's parameters.
        if len(writes) == 1:
            return [Outcome(EventStatus.FAILED, error=f"apply failed: {type(error).__name__}")]
        log.warning(
            "replaying %d events failed with %s; isolating them", len(writes), type(error).__name__
        )
        # In record order (a record's own writes keep their order), as every writer locks:
        # one by one in event order, this transaction could deadlock with a receiver.
        order = sorted(range(len(writes)), key=lambda i: (writes[i].resource.value,
                                                          writes[i].record_id))  # fmt: skip
        outcomes: dict[int, Outcome] = {}
        for i in order:
            (outcomes[i],) = _apply(connection, [writes[i]])
        return [outcomes[i] for i in range(len(writes))]


_Key = tuple[Resource, str]


def _record_states(
    connection: Connection, writes: Sequence[RecordWrite]
) -> dict[_Key, RecordState]:
    """The touched records as they were before the batch, with their last applied fields."""
    states: dict[_Key, RecordState] = {}
    for resource in Resource:
        ids = sorted({w.record_id for w in writes if w.resource is resource})
        if not ids:
            continue
        table = MIRRORED_TABLES[resource.value]
        query = select(
            table.c.id, table.c.content_version, table.c.deleted_version, table.c.raw
        ).where(table.c.id.in_(ids))
        found = {row.id: row for row in connection.execute(query)}
        for record_id in ids:
            row = found.get(record_id)
            states[(resource, record_id)] = (
                RecordState(row.content_version, row.deleted_version, row.raw)
                if row is not None
                else RecordState()
            )
    return states


def _changed_fields(
    states: dict[_Key, RecordState], write: RecordWrite, effect: str | None
) -> tuple[str, ...]:
    """Names of the fields ``write`` changed, following the guard through the batch in order.

    ``apply_writes`` says what each write did (its effect); which fields that touched is the
    difference between the record's content before and after, which the pure guard tracks.
    """
    key = (write.resource, write.record_id)
    before = states[key]
    after, _ = merge(before, write.action, write.version, write.fields)
    states[key] = after
    names: list[str] = []
    if effect in (Effect.CREATED, Effect.UPDATED, Effect.RESTORED):
        ignored = {"id", write.resource.id_field}
        names = _differing(before.fields or {}, after.fields or {}, ignored)
    if effect in (Effect.DELETED, Effect.RESTORED):
        names.append("deleted_at")
    return tuple(names)


_ABSENT = object()


def _differing(before: Mapping[str, Any], after: Mapping[str, Any], ignored: set[str]) -> list[str]:
    return sorted(
        name
        for name in (before.keys() | after.keys()) - ignored
        if before.get(name, _ABSENT) != after.get(name, _ABSENT)
    )
