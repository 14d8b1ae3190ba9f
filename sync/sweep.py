"""The sweep phase of a complete reconcile pass: what HealthDock no longer has.

Page-number pagination is not a snapshot: records inserted or deleted while we page shift
the pages, so a record can be missed without having been deleted. A live record that a
*complete* pass did not list is therefore only a candidate (``mirror.unlisted_records``);
records written after the pass began (by a webhook, say) are never candidates. Each candidate
is confirmed with HealthDock, only in ways its API reference documents (see ``_Confirmer``):
a record it returns is applied, never deleted; one it surely does not have is tombstoned
(``deleted_at``; nothing is physically deleted); one it cannot say about stays live for the
next pass.

A brake holds the sweep when the candidates exceed a share of the live records (with a small
absolute floor): an upstream bug that returns empty pages must not erase a hospital's mirror;
an operator releases it with ``sync --allow-mass-delete``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy.engine import Connection

from mirror import (
    Action,
    RecordWrite,
    Resource,
    RunOutcome,
    Unlisted,
    count_unlisted,
    read_transaction,
    record_write,
    runs,
    unlisted_records,
)
from sync.client import HealthDockClient
from sync.passes import (
    PassOptions,
    PassResult,
    PassWriter,
    apply_records,
    first_failure,
    listed_write,
)

log = logging.getLogger(__name__)

_CANDIDATE_CHUNK = 500


async def sweep(
    write: PassWriter,
    client: HealthDockClient,
    resource: Resource,
    options: PassOptions,
    run: runs.Run,
    result: PassResult,
) -> None:
    """Confirm and tombstone what the pass's mark did not list; called only after a mark
    that listed every page. Holds (``RunOutcome.HELD``) when the brake trips."""
    engine = write.engine
    count = functools.partial(count_unlisted, resource=resource, run_id=run.id,
                              run_started_at=run.started_at)  # fmt: skip
    candidates, live = await asyncio.to_thread(read_transaction, engine, count)
    result.candidates = candidates
    progress = functools.partial(runs.record_progress, run_id=run.id,
                                 counts={"candidates": candidates})  # fmt: skip
    await write(progress)
    limit = max(options.mass_delete_floor, int(options.mass_delete_share * live))
    if candidates > limit and not options.allow_mass_delete:
        result.outcome = RunOutcome.HELD
        result.error = (
            f"mass-delete brake: {candidates} of {live} live {resource.value}s were not "
            f"listed by HealthDock (the limit is {limit}); nothing was tombstoned. Check "
            "HealthDock, then run `healthdock-mirror sync --allow-mass-delete`."
        )
        log.warning("%s pass %d held by the mass-delete brake", resource.value, run.id)
        return
    previous_pass = functools.partial(runs.previous_complete_pass, run=run)
    previous = await asyncio.to_thread(read_transaction, engine, previous_pass)
    confirmer = _Confirmer(client, resource, options.concurrency)
    after, kept = "", 0
    while True:
        ids = functools.partial(
            unlisted_records, resource=resource, run_id=run.id, run_started_at=run.started_at,
            previous=None if previous is None else (previous.id, previous.started_at),
            after=after, limit=_CANDIDATE_CHUNK,
        )  # fmt: skip
        chunk = await asyncio.to_thread(read_transaction, engine, ids)
        if not chunk:
            break
        after = chunk[-1].id
        # A task group, not gather: when one confirmation gives up, the others are cancelled,
        # so nothing keeps asking HealthDock after the pass is recorded as incomplete.
        try:
            async with asyncio.TaskGroup() as tasks:
                confirming = [tasks.create_task(confirmer.confirm(c)) for c in chunk]
        except BaseExceptionGroup as group:
            raise first_failure(group) from None
        writes = [found for task in confirming if (found := task.result()) is not None]
        kept += len(chunk) - len(writes)
        if not writes:
            continue
        changes = await write(functools.partial(_apply_confirmations, run=run, writes=writes))
        result.add(changes, records=0, pages=0)
    if kept:
        log.info(
            "%s pass %d: %d candidates left live (unusable, or not surely gone)",
            resource.value, run.id, kept,
        )  # fmt: skip


def _apply_confirmations(
    connection: Connection, run: runs.Run, writes: Sequence[RecordWrite]
) -> dict[str, int]:
    # A record HealthDock returned was there during this pass, as if listed: the next pass
    # must not count it as missed twice. (Marking the tombstoned ones changes nothing.)
    return apply_records(connection, run, writes, mark=True, counts={})


# The fake files an appointment under its day in India (HealthDock's hospitals keep IST);
# the API reference does not say which day ``date`` means, so the UTC day is asked too.
_IST = timezone(timedelta(hours=5, minutes=30))


class _Confirmer:
    """Asks HealthDock about each candidate, only in ways its API reference documents.

    A patient is looked up with ``search`` (documented "by name or ID"), every page of it.
    ``GET /appointments`` documents no search (a lenient API would ignore one and answer
    page 1 of everything), so an appointment is looked for among those listed on the day the
    mirror has it on. A record that moved to another day is not found there; so an
    appointment not found is tombstoned only when the previous complete pass missed it too:
    a record missed once by page drift is left for the next pass, never deleted.
    """

    def __init__(self, client: HealthDockClient, resource: Resource, concurrency: int) -> None:
        self._client = client
        self._resource = resource
        self._semaphore = asyncio.Semaphore(max(1, concurrency))
        # One listing per day for the whole sweep: candidates often share a day.
        self._days: dict[date, dict[str, dict[str, Any]]] = {}
        self._day_locks: defaultdict[date, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def confirm(self, candidate: Unlisted) -> RecordWrite | None:
        """The write the candidate needs: the record HealthDock has, or a delete; None when
        neither is sure (it stays live, a candidate again next pass)."""
        async with self._semaphore:
            if self._resource is Resource.PATIENT:
                lookup = await self._client.find_patient(candidate.id)
                record, gone = lookup.record, lookup.complete
            else:
                record = await self._find_appointment(candidate)
                gone = candidate.missed_before
        if record is not None:
            # HealthDock has it: never a delete, even when it cannot be applied (it was
            # logged by listed_write, without data).
            return listed_write(self._resource, record)
        if not gone:
            return None
        # HealthDock does not have it: a delete as of now, which an older event cannot undo.
        return record_write(
            self._resource, Action.DELETE, _now_iso(), {self._resource.id_field: candidate.id}
        )

    async def _find_appointment(self, candidate: Unlisted) -> dict[str, Any] | None:
        if candidate.date_time is None:
            return None
        days = {candidate.date_time.astimezone(_IST).date(), candidate.date_time.date()}
        for day in sorted(days):
            async with self._day_locks[day]:
                if day not in self._days:
                    self._days[day] = await self._client.appointments_on(day)
            record = self._days[day].get(candidate.id)
            if record is not None:
                return record
        return None


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
