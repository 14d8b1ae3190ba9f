"""One unit of work for arriving events: store them durably, then apply them to the mirror.

Both happen in one transaction, so an acknowledged event is always stored and, unless it
failed, applied. A fault while applying never loses an event: the batch is retried event by
event, and an event that still fails is stored as ``failed`` with its error, for replay.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from mirror.database import DatabaseUnavailable, write_transaction
from mirror.eventlog import (
    IncomingEvent,
    Outcome,
    store_events,
    stored_before,
)
from mirror.records import apply_writes
from mirror.states import EventStatus, ReceiptStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Receipt:
    """What became of one arriving event: stored under ``seq``, or a duplicate of one stored."""

    seq: int | None
    status: str  # applied, ignored, failed or duplicate
    effect: str | None = None


def ingest(engine: Engine, batch: Sequence[IncomingEvent]) -> list[Receipt]:
    """Store and apply ``batch`` in one transaction; one receipt per event, in order."""
    try:
        return write_transaction(engine, lambda connection: _store_and_apply(connection, batch))
    except DatabaseUnavailable:
        raise
    except Exception as error:
        # Only the type: an exception's text can carry the statement's parameters.
        log.error(
            "applying %d events failed with %s; isolating them", len(batch), type(error).__name__
        )
        if len(batch) > 1:
            return [receipt for item in batch for receipt in ingest(engine, [item])]
        reason = f"apply failed: {type(error).__name__}"
        return write_transaction(
            engine, lambda connection: _store_failed(connection, batch, reason)
        )


def _store_and_apply(connection: Connection, batch: Sequence[IncomingEvent]) -> list[Receipt]:
    # Applied first, stored after, so each event row is written once with its outcome. An
    # event stored before (a redelivery) is not applied again.
    seen = stored_before(connection, batch)
    fresh = [item for item in _first_copies(batch) if _key(item) not in seen]
    writes = [item.event.write for item in fresh if item.event.write is not None]
    effects = iter(apply_writes(connection, writes))
    outcomes = [(item, _outcome(item, effects)) for item in fresh]
    return _receipts(batch, store_events(connection, outcomes), _by_key(outcomes))


def _outcome(item: IncomingEvent, effects: Iterator[str]) -> Outcome:
    if item.unreadable is not None:
        return Outcome(EventStatus.FAILED, error=item.unreadable)
    if item.event.write is None:
        return Outcome(EventStatus.IGNORED)
    return Outcome(EventStatus.APPLIED, next(effects))


def _store_failed(
    connection: Connection, batch: Sequence[IncomingEvent], reason: str
) -> list[Receipt]:
    outcomes = [
        (item, Outcome(EventStatus.FAILED, error=item.unreadable or reason))
        for item in _first_copies(batch)
    ]
    return _receipts(batch, store_events(connection, outcomes), _by_key(outcomes))


def _by_key(
    outcomes: Sequence[tuple[IncomingEvent, Outcome]],
) -> dict[tuple[str, str], Outcome]:
    return {_key(item): outcome for item, outcome in outcomes}


def _key(item: IncomingEvent) -> tuple[str, str]:
    return item.source, item.dedup_key


def _first_copies(batch: Sequence[IncomingEvent]) -> list[IncomingEvent]:
    seen: dict[tuple[str, str], IncomingEvent] = {}
    for item in batch:
        seen.setdefault(_key(item), item)
    return list(seen.values())


def _receipts(
    batch: Sequence[IncomingEvent],
    stored: dict[tuple[str, str], int],
    outcomes: dict[tuple[str, str], Outcome],
) -> list[Receipt]:
    receipts = []
    answered: set[tuple[str, str]] = set()
    for item in batch:
        key = _key(item)
        seq = stored.get(key)
        if seq is None or key in answered:
            receipts.append(Receipt(seq, ReceiptStatus.DUPLICATE))
        else:
            outcome = outcomes[key]
            receipts.append(Receipt(seq, outcome.status, outcome.effect))
        answered.add(key)
    return receipts
