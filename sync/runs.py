"""The only writer of ``sync_runs`` (one row per reconcile pass) and ``leases``.

A lease in the database makes sure one reconcile runs at a time across every process that
shares it: taken when free or expired, renewed as the pass goes, released at the end. A
holder that dies stops renewing, and the lease expires for another to take over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from mirror.schema import leases, sync_runs
from mirror.states import RunKind, RunOutcome


@dataclass(frozen=True, slots=True)
class Run:
    id: int
    resource: str
    started_at: datetime
    checkpoint: int  # every page up to this one is applied
    resumed: bool


def start_or_resume(
    connection: Connection, resource: str, kind: RunKind, *, resume: bool = True
) -> Run:
    """Resume the last pass of ``resource`` if it never finished, else start a new one.

    Only the lease holder calls this, so a pass still marked running was cut short. A run
    that is not resumed is closed as incomplete.
    """
    row = connection.execute(
        select(sync_runs.c.id, sync_runs.c.started_at, sync_runs.c.checkpoint)
        .where(sync_runs.c.resource == resource, sync_runs.c.kind == kind)
        .order_by(sync_runs.c.id.desc())
        .limit(1)
    ).first()
    if row is not None and _outcome(connection, row.id) == RunOutcome.RUNNING:
        if resume:
            checkpoint = int((row.checkpoint or {}).get("page", 0))
            return Run(row.id, resource, _aware(row.started_at), checkpoint, resumed=True)
        finish(connection, row.id, RunOutcome.INCOMPLETE, {}, "cut short (the process stopped)")
    started = datetime.now(UTC)
    run_id = connection.execute(
        insert(sync_runs)
        .values(resource=resource, kind=kind, started_at=started, outcome=RunOutcome.RUNNING,
                pages=0, records=0, created=0, updated=0, tombstoned=0, errors=0,
                checkpoint={"page": 0})
        .returning(sync_runs.c.id)
    ).scalar_one()  # fmt: skip
    return Run(run_id, resource, started, 0, resumed=False)


def _outcome(connection: Connection, run_id: int) -> str:
    return str(
        connection.execute(select(sync_runs.c.outcome).where(sync_runs.c.id == run_id)).scalar_one()
    )


def record_progress(
    connection: Connection, run_id: int, counts: Mapping[str, int], checkpoint: int | None = None
) -> None:
    """Add counts to the run and, for an applied page, move its checkpoint."""
    values: dict[str, Any] = {name: getattr(sync_runs.c, name) + n for name, n in counts.items()}
    if checkpoint is not None:
        values["checkpoint"] = {"page": checkpoint}
    connection.execute(update(sync_runs).where(sync_runs.c.id == run_id).values(**values))


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


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def acquire_lease(connection: Connection, name: str, holder: str, ttl_seconds: float) -> bool:
    """Take or renew the lease ``name`` for ``holder``; False when someone else holds it."""
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=ttl_seconds)
    # RETURNING, not rowcount: drivers do not all report rowcount for every statement.
    taken = connection.execute(
        update(leases)
        .where(leases.c.name == name, or_(leases.c.holder == holder, leases.c.expires_at < now))
        .values(holder=holder, expires_at=expires)
        .returning(leases.c.name)
    ).first()
    if taken is not None:
        return True
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    # Two processes may both find no lease: the primary key lets only one insert win.
    inserted = connection.execute(
        dialect.insert(leases)
        .values(name=name, holder=holder, expires_at=expires)
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(leases.c.name)
    ).first()
    return inserted is not None


def release_lease(connection: Connection, name: str, holder: str) -> None:
    connection.execute(
        update(leases)
        .where(and_(leases.c.name == name, leases.c.holder == holder))
        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )


def lease_holder(connection: Connection, name: str) -> str | None:
    row = connection.execute(
        select(leases.c.holder, leases.c.expires_at).where(leases.c.name == name)
    ).first()
    if row is None or _aware(row.expires_at) < datetime.now(UTC):
        return None
    return str(row.holder)
