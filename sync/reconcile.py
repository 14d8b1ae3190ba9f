"""A reconcile pass: make the mirror equal to HealthDock for one resource.

**Mark.** Page through the resource (largest pages, several in flight when the rate budget
allows) and put every record through the mirror core's ordering guard, so a page read
before a webhook's newer update never overwrites it. Each listed record is marked with the
pass's id. Pages are applied in their own short transactions, each moving the pass's
checkpoint, so a pass that dies resumes where it stopped.

**Sweep.** Page-number pagination is not a snapshot: records inserted or deleted while we
page shift the pages, so a record can be missed without having been deleted. A live record
that a *complete* pass did not mark is therefore only a candidate. Records written after
the pass began (by a webhook, say) are never candidates. Each candidate is confirmed with
HealthDock, only in ways its API reference documents (see ``_Confirmer``): a record it
returns is applied, never deleted; one it surely does not have is tombstoned
(``deleted_at``; nothing is physically deleted); one it cannot say about stays live for the
next pass. An incomplete pass sweeps nothing. A brake holds the sweep when the candidates exceed a
share of the live records (with a small absolute floor): an upstream bug that returns empty
pages must not erase a hospital's mirror; an operator releases it with
``sync --allow-mass-delete``.

Every change a pass finds (a missed create, update or delete) is written to the event log
with source ``reconcile``, so the change feed is complete, and counted on the run. The first
complete pass over a resource is a backfill (``sync_runs.kind``): what it brings is the
initial copy, not webhook loss.

**Fencing.** Under the lease, every write of a pass (pages, confirmations, progress, its
finish) first checks the lease's fence in its own transaction (``sync.runs.Fence``): a holder
that lost the lease while frozen writes nothing more. **A bug** (an exception that is not one
of ours) ends the pass ``failed``, recorded with the exception's type only (its text can
carry data), and it is retried soon like an incomplete one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, TypeVar

from sqlalchemy import Engine, Select, and_, case, func, literal, null, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import ColumnElement

from config.errors import MirrorError
from mirror.database import read_transaction, write_transaction
from mirror.eventlog import Outcome, reconcile_event, store_events
from mirror.events import PayloadError, RecordWrite, Resource, record_write
from mirror.records import apply_writes
from mirror.schema import MIRRORED_TABLES, sync_runs
from mirror.states import Effect, EventStatus, RunKind, RunOutcome
from mirror.versions import Action
from sync import runs
from sync.client import HealthDockClient, UpstreamError

log = logging.getLogger(__name__)

T = TypeVar("T")

# A record without updated_at or created_at can only fill a gap, never overwrite an event.
_NO_VERSION = "0001-01-01T00:00:00Z"
_CANDIDATE_CHUNK = 500
# Pages written in one transaction at most: few enough that a transaction stays short (the
# receiver shares SQLite's single writer), enough to spread a commit over many records.
_PAGES_PER_TRANSACTION = 10
_DONE = 0  # page numbers start at 1: this one tells the writer the fetchers are finished


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


Progress = Callable[[int, int], None]  # (pages applied, pages known)


async def reconcile(
    engine: Engine,
    client: HealthDockClient,
    resource: Resource,
    options: PassOptions,
    *,
    progress: Progress | None = None,
    fence: runs.Fence | None = None,
) -> PassResult:
    """One pass over ``resource``; the caller holds the reconcile lease, whose ``fence`` every
    write checks (None: the caller alone writes, as in a test).

    A pass that HealthDock cuts short ends ``incomplete`` (and sweeps nothing); one that a
    bug ends, ``failed``. One that is interrupted otherwise (cancelled, the database away,
    the process killed) stays ``running`` with its checkpoint, and the next pass over the
    resource resumes it. A lost lease raises ``LeaseLost`` and writes nothing more.
    """
    write = _Writer(engine, fence)
    run = await write(functools.partial(runs.start_whole_pass, resource=resource.value))
    result = PassResult(run.id, resource.value)
    requests_before = client.stats.requests
    limited_before = client.stats.rate_limited
    errors_before = client.stats.errors
    try:
        await _mark(write, client, resource, options, run, result, progress)
        await _sweep(write, client, resource, options, run, result)
    except UpstreamError as error:
        result.outcome, result.error = RunOutcome.INCOMPLETE, str(error)
        log.warning("%s pass %d incomplete: %s", resource.value, run.id, error)
    except MirrorError:
        raise  # ours, not a bug: a lost lease, the database away (the pass resumes)
    except Exception as error:
        _failed(result, error)
    if result.outcome == RunOutcome.RUNNING:
        result.outcome = RunOutcome.SUCCESS
    counts = {
        "requests": client.stats.requests - requests_before,
        "rate_limited": client.stats.rate_limited - limited_before,
        "errors": client.stats.errors - errors_before,
    }
    await _finish(write, result, counts)
    return result


def _failed(result: PassResult, error: Exception) -> None:
    """A bug ended the pass: record it ``failed`` with the error's type, and where it was
    raised, never its text (it can carry a record's data)."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    result.outcome, result.error = RunOutcome.FAILED, type(error).__name__
    log.error(
        "%s pass %d failed: %s%s (a bug; retried soon)",
        result.resource, result.run_id, result.error, where,
    )  # fmt: skip


class _Writer:
    """Runs a pass's writes, each in its own transaction in a thread, each checking the
    lease's fence first (see ``sync.runs.Fence``)."""

    def __init__(self, engine: Engine, fence: runs.Fence | None) -> None:
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


async def _finish(write: _Writer, result: PassResult, counts: dict[str, int]) -> None:
    finish = functools.partial(runs.finish, run_id=result.run_id, outcome=result.outcome,
                               counts=counts, error=result.error)  # fmt: skip
    await write(finish)


async def refresh(
    engine: Engine,
    client: HealthDockClient,
    resource: Resource,
    filters: Sequence[dict[str, str]],
    options: PassOptions,
    *,
    fence: runs.Fence | None = None,
) -> PassResult:
    """Apply what HealthDock lists under each filter (say, one day's appointments).

    A filtered listing heals missed creates and updates quickly; it cannot tell deletions
    (a record outside the filter is not gone), so it sweeps nothing.
    """
    start = functools.partial(runs.start_or_resume, resource=resource.value, kind=RunKind.UPCOMING,
                              resume=False)  # fmt: skip
    write = _Writer(engine, fence)
    run = await write(start)
    result = PassResult(run.id, resource.value)
    try:
        for filter_set in filters:
            number, total = 1, 1
            while number <= total:
                page = await client.page(resource, number, options.page_size, **filter_set)
                total = page.total_pages
                apply = functools.partial(
                    _apply_page, resource=resource, run=run, records=page.records,
                    checkpoint=0, mark=False,
                )  # fmt: skip
                counts = await write(apply)
                _count(result, counts, len(page.records))
                number += 1
        result.outcome = RunOutcome.SUCCESS
    except UpstreamError as error:
        result.outcome, result.error = RunOutcome.INCOMPLETE, str(error)
    except MirrorError:
        raise
    except Exception as error:
        _failed(result, error)
    await _finish(write, result, {})
    return result


async def _mark(
    write_pass: _Writer,
    client: HealthDockClient,
    resource: Resource,
    options: PassOptions,
    run: runs.Run,
    result: PassResult,
    progress: Progress | None,
) -> None:
    state = _PageState(next_page=run.checkpoint + 1, checkpoint=run.checkpoint)
    # Fetched pages wait here for the writer; bounded, so memory stays flat however many
    # pages there are.
    fetched: asyncio.Queue[tuple[int, Sequence[dict[str, Any]]]] = asyncio.Queue(
        maxsize=2 * max(1, options.concurrency)
    )

    async def fetch(number: int) -> None:
        page = await client.page(resource, number, options.page_size)
        state.saw_total(page.total_pages)
        await fetched.put((number, page.records))

    async def fetcher() -> None:
        while (number := state.take()) is not None:
            await fetch(number)

    async def writer() -> None:
        # Whatever pages are waiting go into one transaction: one commit (and one fsync) for
        # several pages, while the fetchers keep the next ones coming.
        while True:
            batch = [await fetched.get()]
            while len(batch) < _PAGES_PER_TRANSACTION and not fetched.empty():
                batch.append(fetched.get_nowait())
            if batch[-1][0] == _DONE:
                batch.pop()
                await write(batch)
                return
            await write(batch)

    async def write(batch: list[tuple[int, Sequence[dict[str, Any]]]]) -> None:
        if not batch:
            return
        checkpoint = state.applied([number for number, _ in batch])
        records = [record for _, page in batch for record in page]
        apply = functools.partial(
            _apply_page, resource=resource, run=run, records=records, checkpoint=checkpoint,
            pages=len(batch),
        )  # fmt: skip
        # A transaction in its thread cannot be stopped half way. When the pass is cancelled
        # meanwhile (a fetch gave up, or the caller stopped it), wait for it to commit or roll
        # back and count what it wrote: nothing of a pass may be written after it ended.
        writing = asyncio.ensure_future(write_pass(apply))
        try:
            await asyncio.shield(writing)
        finally:
            if not writing.done():
                await asyncio.wait({writing})
            if not writing.cancelled() and writing.exception() is None:
                _count(result, writing.result(), len(records), pages=len(batch))
        if progress is not None:
            progress(state.checkpoint, state.total or 0)

    try:
        async with asyncio.TaskGroup() as tasks:
            writing = tasks.create_task(writer())
            # The first page says how many there are; then `concurrency` pages are in flight.
            first = state.take()
            if first is not None:
                await fetch(first)
            async with asyncio.TaskGroup() as fetching:
                for _ in range(max(1, options.concurrency)):
                    fetching.create_task(fetcher())
            await fetched.put((_DONE, []))
            await writing
    except BaseExceptionGroup as group:
        # The first failure ended the pass (the task group cancelled the rest): it is the one
        # that says why, an UpstreamError making the pass incomplete.
        raise _first_leaf(group) from None


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


@dataclass(slots=True)
class _PageState:
    """Which page to fetch next, and the checkpoint: every page up to it is applied."""

    next_page: int
    checkpoint: int
    total: int | None = None
    done: set[int] = field(default_factory=set)

    def take(self) -> int | None:
        if self.total is not None and self.next_page > max(self.total, 1):
            return None
        number = self.next_page
        self.next_page += 1
        return number

    def saw_total(self, total_pages: int) -> None:
        # Drift may grow the total while we page: keep going to the largest one seen.
        self.total = max(self.total or 0, total_pages)

    def applied(self, numbers: Sequence[int]) -> int:
        self.done.update(numbers)
        while self.checkpoint + 1 in self.done:
            self.checkpoint += 1
            self.done.discard(self.checkpoint)
        return self.checkpoint


def _apply_page(
    connection: Connection,
    resource: Resource,
    run: runs.Run,
    records: Sequence[dict[str, Any]],
    checkpoint: int,
    mark: bool = True,
    pages: int = 1,
) -> dict[str, int]:
    writes = [write for write in map(lambda r: _api_write(resource, r), records) if write]
    effects = apply_writes(connection, writes, seen_in_run=run.id if mark else None)
    counts = _record_changes(connection, run, writes, effects)
    runs.record_progress(
        connection, run.id, {**counts, "pages": pages, "records": len(records)}, checkpoint
    )
    return counts


def _api_write(resource: Resource, record: dict[str, Any]) -> RecordWrite | None:
    version = record.get("updated_at") or record.get("created_at") or _NO_VERSION
    try:
        return record_write(resource, Action.UPDATE, version, record)
    except PayloadError as error:
        # One malformed record must not stop the pass; it is skipped and logged (no data).
        log.warning("skipping a %s from the API: %s", resource.value, error)
        return None


_COUNTER_OF_EFFECT = {
    Effect.CREATED: "created",
    Effect.UPDATED: "updated",
    Effect.RESTORED: "updated",
    Effect.DELETED: "tombstoned",
}


def _record_changes(
    connection: Connection, run: runs.Run, writes: Sequence[RecordWrite], effects: Sequence[Effect]
) -> dict[str, int]:
    """Write each change the pass found to the event log; count them by kind."""
    counts = {"created": 0, "updated": 0, "tombstoned": 0}
    events = []
    now = datetime.now(UTC)
    for write, effect in zip(writes, effects, strict=True):
        event = reconcile_event(run.id, write, effect, now)
        if event is None:
            continue
        counts[_COUNTER_OF_EFFECT[effect]] += 1
        events.append((event, Outcome(EventStatus.APPLIED, effect)))
    store_events(connection, events)
    return counts


def _count(result: PassResult, counts: dict[str, int], records: int, pages: int = 1) -> None:
    result.pages += pages
    result.records += records
    result.created += counts["created"]
    result.updated += counts["updated"]
    result.tombstoned += counts["tombstoned"]


async def _sweep(
    write: _Writer,
    client: HealthDockClient,
    resource: Resource,
    options: PassOptions,
    run: runs.Run,
    result: PassResult,
) -> None:
    count = functools.partial(_count_candidates, resource=resource, run=run)
    engine = write.engine
    candidates, live = await asyncio.to_thread(read_transaction, engine, count)
    result.candidates = candidates
    record = functools.partial(
        runs.record_progress, run_id=run.id, counts={"candidates": candidates}
    )
    await write(record)
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
    previous = await asyncio.to_thread(
        read_transaction, engine, functools.partial(_previous_complete_pass, run=run)
    )
    confirmer = _Confirmer(client, resource, options.concurrency)
    after, kept = "", 0
    while True:
        ids = functools.partial(
            _candidates, resource=resource, run=run, previous=previous, after=after
        )
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
            raise _first_leaf(group) from None
        writes = [found for task in confirming if (found := task.result()) is not None]
        kept += len(chunk) - len(writes)
        if not writes:
            continue
        apply = functools.partial(_apply_confirmations, run=run, writes=writes)
        counts = await write(apply)
        _count(result, counts, 0, pages=0)
    if kept:
        log.info(
            "%s pass %d: %d candidates left live (unusable, or not surely gone)",
            resource.value, run.id, kept,
        )  # fmt: skip


# The fake files an appointment under its day in India (HealthDock's hospitals keep IST);
# the API reference does not say which day ``date`` means, so the UTC day is asked too.
_IST = timezone(timedelta(hours=5, minutes=30))


@dataclass(frozen=True, slots=True)
class _Candidate:
    id: str
    date_time: datetime | None  # an appointment's, as the mirror has it
    missed_before: bool  # the previous complete pass did not list it either


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

    async def confirm(self, candidate: _Candidate) -> RecordWrite | None:
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
            # logged by _api_write, without data).
            return _api_write(self._resource, record)
        if not gone:
            return None
        # HealthDock does not have it: a delete as of now, which an older event cannot undo.
        return record_write(
            self._resource, Action.DELETE, _now_iso(), {self._resource.id_field: candidate.id}
        )

    async def _find_appointment(self, candidate: _Candidate) -> dict[str, Any] | None:
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


def _apply_confirmations(
    connection: Connection, run: runs.Run, writes: Sequence[RecordWrite]
) -> dict[str, int]:
    # A record HealthDock returned was there during this pass, as if listed: the next pass
    # must not count it as missed twice. (Marking the tombstoned ones changes nothing.)
    effects = apply_writes(connection, writes, seen_in_run=run.id)
    counts = _record_changes(connection, run, writes, effects)
    runs.record_progress(connection, run.id, counts)
    return counts


def _unseen(resource: Resource, run: runs.Run) -> Select[Any]:
    """Live records this pass did not list and that nobody wrote since it began."""
    table = MIRRORED_TABLES[resource.value]
    return select(table.c.id).where(
        table.c.deleted_at.is_(None),
        or_(table.c.seen_in_run.is_(None), table.c.seen_in_run != run.id),
        table.c.mirrored_at < run.started_at,
    )


def _count_candidates(connection: Connection, resource: Resource, run: runs.Run) -> tuple[int, int]:
    table = MIRRORED_TABLES[resource.value]
    candidates = connection.execute(
        select(func.count()).select_from(_unseen(resource, run).subquery())
    ).scalar_one()
    live = connection.execute(
        select(func.count()).select_from(table).where(table.c.deleted_at.is_(None))
    ).scalar_one()
    return int(candidates), int(live)


def _previous_complete_pass(connection: Connection, run: runs.Run) -> runs.Run | None:
    """The last pass over the whole resource (full or backfill) before ``run`` that listed
    every page (a held pass did: only its sweep waits)."""
    row = connection.execute(
        select(sync_runs.c.id, sync_runs.c.started_at)
        .where(
            sync_runs.c.resource == run.resource,
            sync_runs.c.kind.in_((RunKind.BACKFILL, RunKind.FULL)),
            sync_runs.c.outcome.in_(runs.COMPLETE),
            sync_runs.c.id < run.id,
        )
        .order_by(sync_runs.c.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return runs.Run(row.id, run.resource, _utc(row.started_at), 0, resumed=False)


def _candidates(
    connection: Connection,
    resource: Resource,
    run: runs.Run,
    previous: runs.Run | None,
    after: str,
) -> list[_Candidate]:
    """The next candidates by id after ``after``: memory stays flat however many there are."""
    table = MIRRORED_TABLES[resource.value]
    if previous is None:
        missed: ColumnElement[bool] = literal(False)
    else:
        # Listed by an earlier pass but not the previous one; or never listed, and in the
        # mirror unchanged since before the previous pass began (so it was there to list).
        missed = or_(
            table.c.seen_in_run < previous.id,
            and_(table.c.seen_in_run.is_(None), table.c.mirrored_at < previous.started_at),
        )
    when = table.c.date_time if resource is Resource.APPOINTMENT else null()
    query = (
        _unseen(resource, run)
        .add_columns(when, case((missed, True), else_=False))
        .where(table.c.id > after)
        .order_by(table.c.id)
        .limit(_CANDIDATE_CHUNK)
    )
    return [
        _Candidate(str(row[0]), _utc(row[1]) if row[1] is not None else None, bool(row[2]))
        for row in connection.execute(query)
    ]


def _utc(moment: datetime) -> datetime:
    # SQLite hands back the naive UTC it stores.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
