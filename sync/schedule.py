"""APScheduler jobs: the full reconcile on an interval, and a frequent refresh of the coming
days' appointments. Used inside ``serve`` and by the separate ``worker`` command.

Every job takes the reconcile lease, so any number of processes can run the scheduler: one
reconcile runs at a time, and the others skip their turn. A full reconcile that did not
succeed (rate limits, errors, the database away) is tried again after
``HEALTHDOCK_SYNC_RETRY_MINUTES`` rather than a whole interval later.

When ``HEALTHDOCK_EVENT_RETENTION_DAYS`` is set, an hourly job also removes the raw payloads
of applied events older than that (``mirror.retention``). It needs no lease: it only removes
what is prunable at the moment it writes, so two processes running it at once do no harm.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from config import Settings
from mirror import (
    DatabaseUnavailable,
    Resource,
    RunOutcome,
    audit,
    leases,
    prune_event_payloads,
    read_transaction,
    runs,
    sync_requests,
    write_transaction,
)
from sync.client import RateBudgetListener, UpstreamError, rate_budget_listener
from sync.job import run_reconcile, run_refresh

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger(__name__)

_RETRY_JOB = "reconcile-retry"
RETENTION_JOB = "event-retention"
AUDIT_RETENTION_JOB = "audit-retention"
REQUESTS_JOB = "requested-reconciles"
_RETENTION_INTERVAL = timedelta(hours=1)


def build_scheduler(settings: Settings, engine: Engine) -> AsyncIOScheduler:
    """A scheduler with both jobs; the caller starts it on its event loop and shuts it down."""
    # Imported here: `sync` and the other one-off commands import this package, not a scheduler.
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    scheduler = AsyncIOScheduler(timezone=UTC)

    async def full_reconcile() -> None:
        try:
            results = await run_reconcile(settings, engine, list(Resource))
        except leases.LeaseHeld as held:
            log.info("reconcile skipped: %s", held)
            return
        except (DatabaseUnavailable, UpstreamError) as error:
            log.warning("reconcile failed: %s", error)
            results = []
        if not results or any(result.outcome != RunOutcome.SUCCESS for result in results):
            retry_at = datetime.now(UTC) + timedelta(minutes=settings.sync_retry_minutes)
            scheduler.add_job(full_reconcile, "date", run_date=retry_at, id=_RETRY_JOB,
                              replace_existing=True)  # fmt: skip
            log.info("reconcile incomplete; trying again at %s", retry_at.isoformat())

    async def upcoming_appointments() -> None:
        today = datetime.now(UTC).date()
        days = [today + timedelta(days=n) for n in range(settings.sync_upcoming_days + 1)]
        try:
            await run_refresh(settings, engine, days)
        except leases.LeaseHeld as held:
            log.info("appointment refresh skipped: %s", held)
        except (DatabaseUnavailable, UpstreamError) as error:
            log.warning("appointment refresh failed: %s", error)

    scheduler.add_job(
        full_reconcile,
        IntervalTrigger(minutes=settings.sync_interval_minutes),
        id="reconcile",
        next_run_time=datetime.now(UTC) + timedelta(seconds=5),
        max_instances=1,
        coalesce=True,
    )
    scheduler.add_job(
        upcoming_appointments,
        IntervalTrigger(minutes=settings.sync_upcoming_minutes),
        id="upcoming-appointments",
        max_instances=1,
        coalesce=True,
    )
    scheduler.add_job(
        functools.partial(run_requested, settings, engine),
        IntervalTrigger(seconds=settings.sync_request_poll_seconds),
        id=REQUESTS_JOB,
        max_instances=1,
        coalesce=True,
    )
    if settings.event_retention_days is not None:
        _add_retention_job(scheduler, engine, timedelta(days=settings.event_retention_days))
    if settings.audit_retention_days is not None:
        _add_audit_retention_job(scheduler, engine, timedelta(days=settings.audit_retention_days))
    return scheduler


async def run_requested(settings: Settings, engine: Engine) -> None:
    """Run the oldest reconcile an operator asked for (the console's sync now and release),
    if any; one taken while another reconcile holds the lease waits for the next look."""
    try:
        request = await asyncio.to_thread(write_transaction, engine, sync_requests.take_request)
    except DatabaseUnavailable as error:
        log.warning("requested reconciles: %s", error)
        return
    if request is None:
        return
    try:
        outcome = await _run_request(settings, engine, request)
    except leases.LeaseHeld as held:
        log.info("requested reconcile %d waits: %s", request.id, held)
        put_back = functools.partial(sync_requests.put_back, request=request)
        await asyncio.to_thread(write_transaction, engine, put_back)
        return
    except Exception as error:  # a bug: the request must not stay taken for ever
        log.error("requested reconcile %d failed: %s", request.id, type(error).__name__)
        outcome = RunOutcome.FAILED
    finish = functools.partial(sync_requests.finish_request, request=request, outcome=outcome)
    await asyncio.to_thread(write_transaction, engine, finish)
    log.info("requested reconcile %d by %s: %s", request.id, request.requested_by, outcome)


async def _run_request(
    settings: Settings, engine: Engine, request: sync_requests.SyncRequest
) -> str:
    resources = list(Resource) if request.resource is None else [Resource(request.resource)]
    if request.held_run_id is not None:
        # A release is for the held pass the operator saw: if a pass ran since, the brake's
        # verdict is that pass's to give, not this request's.
        latest = await asyncio.to_thread(
            read_transaction, engine, functools.partial(runs.latest_runs, limit=50)
        )
        newest = next((r for r in latest if r.resource == request.resource), None)
        if newest is None or newest.id != request.held_run_id or newest.outcome != RunOutcome.HELD:
            return "superseded"
    try:
        results = await run_reconcile(settings, engine, resources,
                                      allow_mass_delete=request.allow_mass_delete)  # fmt: skip
    except (DatabaseUnavailable, UpstreamError) as error:
        log.warning("requested reconcile %d failed: %s", request.id, error)
        return RunOutcome.FAILED
    outcomes = [result.outcome for result in results] or [RunOutcome.FAILED]
    return next((o for o in _WORST_FIRST if o in outcomes), outcomes[0])


_WORST_FIRST = (RunOutcome.FAILED, RunOutcome.INCOMPLETE, RunOutcome.HELD, RunOutcome.SUCCESS)


def _add_retention_job(scheduler: AsyncIOScheduler, engine: Engine, retention: timedelta) -> None:
    prune = functools.partial(prune_event_payloads, engine, retention)
    _add_pruning(scheduler, RETENTION_JOB, prune, "event payload retention",
                 "the payloads of %d applied events")  # fmt: skip


def _add_audit_retention_job(
    scheduler: AsyncIOScheduler, engine: Engine, retention: timedelta
) -> None:
    prune = functools.partial(audit.prune_audit, engine, retention)
    _add_pruning(scheduler, AUDIT_RETENTION_JOB, prune, "audit retention", "%d audit rows")


def _add_pruning(
    scheduler: AsyncIOScheduler, job_id: str, prune: Callable[[], int], what: str, removed_what: str
) -> None:
    """An hourly job running ``prune`` (in a thread), logging what it removed."""
    from apscheduler.triggers.interval import IntervalTrigger

    async def run() -> None:
        try:
            removed = await asyncio.to_thread(prune)
        except DatabaseUnavailable as error:
            log.warning("%s failed: %s", what, error)
            return
        if removed:
            log.info("retention removed " + removed_what, removed)

    scheduler.add_job(
        run,
        IntervalTrigger(seconds=_RETENTION_INTERVAL.total_seconds()),
        id=job_id,
        next_run_time=datetime.now(UTC) + timedelta(minutes=1),
        max_instances=1,
        coalesce=True,
    )


@contextlib.asynccontextmanager
async def running_scheduler(
    settings: Settings, engine: Engine, *, on_rate_budget: RateBudgetListener | None = None
) -> AsyncIterator[None]:
    """The reconcile jobs, running on the caller's event loop while the context is open.

    ``on_rate_budget`` is told every rate limit HealthDock reports to these jobs (``serve``
    exports it as metrics); the jobs' tasks inherit it from this context.
    """
    listening = rate_budget_listener.set(on_rate_budget)
    scheduler = build_scheduler(settings, engine)
    scheduler.start()
    try:
        yield
    finally:
        scheduler.shutdown(wait=False)
        rate_budget_listener.reset(listening)
