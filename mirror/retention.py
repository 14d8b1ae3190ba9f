"""Payload retention: remove the raw bodies of applied events once they are old enough.

Only applied events lose their payload (``HEALTHDOCK_EVENT_RETENTION_DAYS`` after they were
applied); failed, pending and ignored events keep theirs, since an operator may still replay
them. The row itself stays (type, record, version, outcome), with ``body_pruned_at`` set.
Pruning runs in short batches, each its own transaction, so it never holds SQLite's write
lock for long; candidates are found in a read transaction first.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from mirror.database import read_transaction, write_transaction
from mirror.eventlog import prunable_events, prune_payloads

DEFAULT_BATCH_SIZE = 500


def prune_event_payloads(
    engine: Engine,
    retention: timedelta,
    *,
    now: datetime | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> int:
    """Remove the payloads of events applied more than ``retention`` ago; return how many."""
    cutoff = (now or datetime.now(UTC)) - retention
    removed, after = 0, 0
    while True:
        find = functools.partial(prunable_events, cutoff=cutoff, after=after, limit=batch_size)
        seqs = read_transaction(engine, find)
        if not seqs:
            return removed
        prune = functools.partial(prune_payloads, seqs=seqs, cutoff=cutoff)
        removed += write_transaction(engine, prune)
        after = seqs[-1]
