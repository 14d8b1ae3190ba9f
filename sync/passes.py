"""What every pass shares: its options, its result, and how it writes.

A pass writes in short transactions of its own, each run in a thread and each checking the
lease's fence first (:class:`PassWriter`), so a holder that lost its lease while frozen writes
nothing more. What it writes, it writes through the mirror core: records through the ordering
guard, each change it finds into the event log (source ``reconcile``), counts on its run.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from mirror import (
    Action,
    Effect,
    EventStatus,
    Outcome,
    PayloadError,
    RecordWrite,
    Resource,
    RunOutcome,
    apply_writes,
    leases,
    reconcile_event,
    record_write,
    runs,
    store_events,
    write_transaction,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# A record without updated_at or created_at can only fill a gap, never overwrite an event.
_NO_VERSION = "0001-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class PassOptions:
    page_size: int = 100
    concurrency: int = 8
    mass_delete_share: float = 0.05
    mass_delete_floor: int = 10
    allow_mass_delete: bool = False


@dataclass(slots=True)
class PassResult:
    run_id: int
    resource: str
    outcome: RunOutcome = RunOutcome.RUNNING
    pages: int = 0
    records: int = 0
    created: int = 0
    updated: int = 0
    tombstoned: int = 0
    candidates: int = 0
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, changes: dict[str, int], records: int, pages: int) -> None:
        """Count what one committed write applied."""
        self.pages += pages
        self.records += records
        self.created += changes["created"]
        self.updated += changes["updated"]
        self.tombstoned += changes["tombstoned"]


Progress = Callable[[int, int], None]  # (pages applied, pages known)


class PassWriter:
    """Runs a pass's writes, each in its own transaction in a thread, each checking the
    lease's fence first (see ``mirror.leases.Fence``), and noting the fence's token on the
    pass's run."""

    def __init__(self, engine: Engine, fence: leases.Fence | None) -> None:
        self.engine = engine
        self._fence = fence
        self._run_id: int | None = None

    def _fenced(self, work: Callable[[Connection], T], connection: Connection) -> T:
        if self._fence is None:
            return work(connection)
        self._fence.check(connection)
        done = work(connection)
        if isinstance(done, runs.Run):
            self._run_id = done.id
        if self._run_id is not None:
            runs.stamp_lease_token(connection, self._run_id, self._fence.token)
        return done

    def now(self, work: Callable[[Connection], T]) -> T:
        """The write, in the calling thread."""
        return write_transaction(self.engine, functools.partial(self._fenced, work))

    async def __call__(self, work: Callable[[Connection], T]) -> T:
        return await asyncio.to_thread(self.now, work)


def first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The failure that ended a task group (it cancelled the rest): the one that says why."""
    first = group.exceptions[0]
    return first_failure(first) if isinstance(first, BaseExceptionGroup) else first


def listed_write(resource: Resource, record: dict[str, Any]) -> RecordWrite | None:
    """A record HealthDock returned, as a write; None (logged, without data) when malformed:
    one bad record must not stop the pass."""
    version = record.get("updated_at") or record.get("created_at") or _NO_VERSION
    try:
        return record_write(resource, Action.UPDATE, version, record)
    except PayloadError as error:
        log.warning("skipping a %s from the API: %s", resource.value, error)
        return None


def apply_records(
    connection: Connection,
    run: runs.Run,
    writes: Sequence[RecordWrite],
    *,
    mark: bool,
    counts: dict[str, int],
    checkpoint: int | None = None,
) -> dict[str, int]:
    """Apply ``writes`` for the pass, log each change it found, and add it and ``counts``
    to the run (moving its checkpoint when given). With ``mark``, every record written is
    marked as listed by the pass. Returns the changes by kind."""
    effects = apply_writes(connection, writes, seen_in_run=run.id if mark else None)
    changes = _log_changes(connection, run, writes, effects)
    runs.record_progress(connection, run.id, {**changes, **counts}, checkpoint)
    return changes


def apply_listed(
    connection: Connection,
    resource: Resource,
    run: runs.Run,
    records: Sequence[dict[str, Any]],
    *,
    mark: bool,
    checkpoint: int,
    pages: int,
) -> dict[str, int]:
    """Apply ``pages`` pages of a listing (their ``records``), moving the run's checkpoint."""
    writes = [write for record in records if (write := listed_write(resource, record))]
    return apply_records(connection, run, writes, mark=mark, checkpoint=checkpoint,
                         counts={"pages": pages, "records": len(records)})  # fmt: skip


_COUNTER_OF_EFFECT = {
    Effect.CREATED: "created",
    Effect.UPDATED: "updated",
    Effect.RESTORED: "updated",
    Effect.DELETED: "tombstoned",
}


def _log_changes(
    connection: Connection, run: runs.Run, writes: Sequence[RecordWrite], effects: Sequence[Effect]
) -> dict[str, int]:
    """Write each change the pass found to the event log; count them by kind."""
    changes = {"created": 0, "updated": 0, "tombstoned": 0}
    events = []
    now = datetime.now(UTC)
    for write, effect in zip(writes, effects, strict=True):
        event = reconcile_event(run.id, write, effect, now)
        if event is None:
            continue
        changes[_COUNTER_OF_EFFECT[effect]] += 1
        events.append((event, Outcome(EventStatus.APPLIED, effect)))
    store_events(connection, events)
    return changes
