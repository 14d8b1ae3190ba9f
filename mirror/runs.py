"""The only writer and reader of ``sync_runs``: one row per reconcile pass.

A pass is started (or the one cut short resumed) by the lease holder, moves its checkpoint
and counts as it applies pages, and finishes with an outcome (``mirror.states.RunOutcome``).
The reads here are what ``status``, ``/metrics``, the demo and the sweep ask of the table;
what counts as webhook loss is one rule, ``LOSS_KINDS``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Integer, Update, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection

from mirror.database import as_utc
from mirror.schema import sync_runs
from mirror.states import LOSS_KINDS, RunKind, RunOutcome

__all__ = [
    "COMPLETE",
    "WHOLE_KINDS",
    "Healed",
    "Run",
    "RunSummary",
    "RunTotals",
    "finish",
    "healed",
    "latest_runs",
    "loss_per_day",
    "previous_complete_pass",
    "record_progress",
    "run_count",
    "run_totals",
    "stamp_lease_token",
    "start_or_resume",
    "start_whole_pass",
]

# Passes over a whole resource; the one that resumes a cut-short pass keeps its kind.
WHOLE_KINDS = (RunKind.BACKFILL, RunKind.FULL)
# Outcomes of a pass that listed every page (a held one did: only its sweep waits).
COMPLETE = (RunOutcome.SUCCESS, RunOutcome.HELD)


@dataclass(frozen=True, slots=True)
class Run:
    """A pass as its writer knows it."""

    id: int
    resource: str
    started_at: datetime
    checkpoint: int  # every page up to this one is applied
    resumed: bool
    kind: RunKind = RunKind.FULL


def start_or_resume(
    connection: Connection, resource: str, kind: RunKind, *, resume: bool = True
) -> Run:
    """Resume the last pass of ``resource`` if it never finished, else start a new one.

    Only the lease holder calls this, so a pass still marked running was cut short. A run
    that is not resumed is closed as incomplete.
    """
    return _start_or_resume(connection, resource, (kind,), kind, resume=resume)


def start_whole_pass(connection: Connection, resource: str) -> Run:
    """Resume the last pass over all of ``resource`` if it never finished, else start one:
    a backfill when the resource never had a complete one, else a full pass."""
    had_one = connection.execute(
        select(sync_runs.c.id)
        .where(
            sync_runs.c.resource == resource,
            sync_runs.c.kind.in_(WHOLE_KINDS),
            sync_runs.c.outcome.in_(COMPLETE),
        )
        .limit(1)
    ).first()
    kind = RunKind.FULL if had_one is not None else RunKind.BACKFILL
    return _start_or_resume(connection, resource, WHOLE_KINDS, kind, resume=True)


def _start_or_resume(
    connection: Connection,
    resource: str,
    kinds: tuple[RunKind, ...],
    kind: RunKind,
    *,
    resume: bool,
) -> Run:
    row = connection.execute(
        select(sync_runs.c.id, sync_runs.c.kind, sync_runs.c.started_at, sync_runs.c.checkpoint)
        .where(sync_runs.c.resource == resource, sync_runs.c.kind.in_(kinds))
        .order_by(sync_runs.c.id.desc())
        .limit(1)
    ).first()
    if row is not None and _outcome(connection, row.id) == RunOutcome.RUNNING:
        if resume:
            checkpoint = int((row.checkpoint or {}).get("page", 0))
            return Run(
                row.id, resource, as_utc(row.started_at), checkpoint, resumed=True,
                kind=RunKind(row.kind),
            )  # fmt: skip
        finish(connection, row.id, RunOutcome.INCOMPLETE, {}, "cut short (the process stopped)")
    started = datetime.now(UTC)
    run_id = connection.execute(
        insert(sync_runs)
        .values(resource=resource, kind=kind, started_at=started, outcome=RunOutcome.RUNNING,
                pages=0, records=0, created=0, updated=0, tombstoned=0, errors=0,
                checkpoint={"page": 0})
        .returning(sync_runs.c.id)
    ).scalar_one()  # fmt: skip
    return Run(run_id, resource, started, 0, resumed=False, kind=kind)


def stamp_lease_token(connection: Connection, run_id: int, token: int) -> None:
    """Note on the run which taking of the lease made its latest write."""
    connection.execute(_STAMP_LEASE_TOKEN, {"run_id": run_id, "token": token})


# Built once, its values bound: every write of a pass stamps its run.
_STAMP_LEASE_TOKEN = (
    update(sync_runs)
    .where(sync_runs.c.id == bindparam("run_id"))
    .values(lease_token=bindparam("token", type_=sync_runs.c.lease_token.type))
)


def _outcome(connection: Connection, run_id: int) -> str:
    return str(
        connection.execute(select(sync_runs.c.outcome).where(sync_runs.c.id == run_id)).scalar_one()
    )


def record_progress(
    connection: Connection, run_id: int, counts: Mapping[str, int], checkpoint: int | None = None
) -> None:
    """Add counts to the run and, for an applied page, move its checkpoint."""
    values: dict[str, Any] = {f"add_{name}": n for name, n in counts.items()}
    if checkpoint is not None:
        values["new_checkpoint"] = {"page": checkpoint}
    statement = _progress_statement(tuple(counts), checkpoint is not None)
    connection.execute(statement, {"run_id": run_id, **values})


@functools.cache
def _progress_statement(counters: tuple[str, ...], checkpoint: bool) -> Update:
    # Built once for each set of counters, its values bound: a pass writes its progress with
    # every batch of pages, and building the statement anew cost more than running it.
    values: dict[str, Any] = {
        name: getattr(sync_runs.c, name) + bindparam(f"add_{name}", type_=Integer)
        for name in counters
    }
    if checkpoint:
        values["checkpoint"] = bindparam("new_checkpoint", type_=sync_runs.c.checkpoint.type)
    return update(sync_runs).where(sync_runs.c.id == bindparam("run_id")).values(**values)


def finish(
    connection: Connection,
    run_id: int,
    outcome: RunOutcome,
    counts: Mapping[str, int],
    error: str | None = None,
) -> None:
    values: dict[str, Any] = {name: getattr(sync_runs.c, name) + n for name, n in counts.items()}
    connection.execute(
        update(sync_runs)
        .where(sync_runs.c.id == run_id)
        .values(**values, outcome=outcome, error=error, finished_at=datetime.now(UTC))
    )


def previous_complete_pass(connection: Connection, run: Run) -> Run | None:
    """The last pass over the whole resource (full or backfill) before ``run`` that listed
    every page (a held pass did: only its sweep waits)."""
    row = connection.execute(
        select(sync_runs.c.id, sync_runs.c.kind, sync_runs.c.started_at)
        .where(
            sync_runs.c.resource == run.resource,
            sync_runs.c.kind.in_(WHOLE_KINDS),
            sync_runs.c.outcome.in_(COMPLETE),
            sync_runs.c.id < run.id,
        )
        .order_by(sync_runs.c.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return Run(row.id, run.resource, as_utc(row.started_at), 0, resumed=False,
               kind=RunKind(row.kind))  # fmt: skip


@dataclass(frozen=True, slots=True)
class RunTotals:
    """The passes of one resource, kind and outcome, summed (for ``/metrics``)."""

    resource: str
    kind: str
    outcome: str
    runs: int
    pages: int
    records: int
    requests: int
    rate_limited: int
    created: int
    updated: int
    tombstoned: int
    last_finished: datetime | None


def run_totals(connection: Connection) -> list[RunTotals]:
    c = sync_runs.c
    rows = connection.execute(
        select(
            c.resource, c.kind, c.outcome, func.count(),
            func.coalesce(func.sum(c.pages), 0), func.coalesce(func.sum(c.records), 0),
            func.coalesce(func.sum(c.requests), 0), func.coalesce(func.sum(c.rate_limited), 0),
            func.coalesce(func.sum(c.created), 0), func.coalesce(func.sum(c.updated), 0),
            func.coalesce(func.sum(c.tombstoned), 0), func.max(c.finished_at),
        ).group_by(c.resource, c.kind, c.outcome)
    ).all()  # fmt: skip
    totals = []
    for resource, kind, outcome, *sums, last_finished in rows:
        runs, pages, records, requests, rate_limited, created, updated, tombstoned = map(int, sums)
        finished = None if last_finished is None else as_utc(last_finished)
        total = RunTotals(str(resource), str(kind), str(outcome), runs, pages, records, requests,
                          rate_limited, created, updated, tombstoned, finished)  # fmt: skip
        totals.append(total)
    return totals


@dataclass(frozen=True, slots=True)
class Healed:
    """What the passes that measure webhook loss (not backfills) changed: each change is one
    the webhooks had not brought."""

    runs: int
    created: int
    updated: int
    tombstoned: int
    rate_limited: int


def healed(connection: Connection, since: datetime | None = None) -> Healed:
    """What passes started at ``since`` or later (every pass without it) healed."""
    query = select(
        func.count(),
        *(
            func.coalesce(func.sum(column), 0)
            for column in (sync_runs.c.created, sync_runs.c.updated, sync_runs.c.tombstoned,
                           sync_runs.c.rate_limited)
        ),
    ).where(sync_runs.c.kind.in_(LOSS_KINDS))  # fmt: skip
    if since is not None:
        query = query.where(sync_runs.c.started_at >= since)
    runs, created, updated, tombstoned, rate_limited = (
        int(value) for value in connection.execute(query).one()
    )
    return Healed(runs, created, updated, tombstoned, rate_limited)


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One reconcile pass (a ``sync_runs`` row), as ``status`` shows it."""

    id: int
    resource: str
    kind: str
    outcome: str
    started_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None  # None while the pass is running
    pages: int
    records: int
    created: int
    updated: int
    tombstoned: int
    candidates: int
    rate_limited: int
    errors: int
    error: str | None


def latest_runs(connection: Connection, limit: int) -> list[RunSummary]:
    """The ``limit`` latest passes, the latest first."""
    rows = connection.execute(select(sync_runs).order_by(sync_runs.c.id.desc()).limit(limit))
    summaries = []
    for row in rows:
        started_at = as_utc(row.started_at)
        finished_at = None if row.finished_at is None else as_utc(row.finished_at)
        duration = (
            None if finished_at is None else round((finished_at - started_at).total_seconds(), 3)
        )
        summaries.append(
            RunSummary(
                id=int(row.id),
                resource=row.resource,
                kind=row.kind,
                outcome=row.outcome,
                started_at=started_at,
                finished_at=finished_at,
                duration_seconds=duration,
                pages=row.pages,
                records=row.records,
                created=row.created,
                updated=row.updated,
                tombstoned=row.tombstoned,
                candidates=row.candidates,
                rate_limited=row.rate_limited,
                errors=row.errors,
                error=row.error,
            )
        )
    return summaries


def run_count(connection: Connection) -> int:
    return int(connection.execute(select(func.count()).select_from(sync_runs)).scalar_one())


def loss_per_day(connection: Connection, since: datetime) -> list[tuple[date, int]]:
    """(UTC day, changes the passes started that day healed) from ``since`` on: webhook loss,
    backfills left out."""
    c = sync_runs.c
    if connection.dialect.name == "postgresql":
        day: Any = func.date(func.timezone("UTC", c.started_at))
    else:
        day = func.substr(c.started_at, 1, 10)  # naive UTC text: 'YYYY-MM-DD ...'
    rows = connection.execute(
        select(day, func.coalesce(func.sum(c.created + c.updated + c.tombstoned), 0))
        .where(c.started_at >= since, c.kind.in_(LOSS_KINDS))
        .group_by(day)
    )
    found = []
    for moment, healed_count in rows:
        when = moment if isinstance(moment, date) else date.fromisoformat(str(moment))
        found.append((when, int(healed_count)))
    return found
