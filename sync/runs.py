"""The only writer of ``sync_runs`` (one row per reconcile pass) and ``leases``.

A lease in the database makes sure one reconcile runs at a time across every process that
shares it: taken when free or expired, renewed as the pass goes, released at the end. A
holder that dies stops renewing, and the lease expires for another to take over.

**Fencing.** A holder that is frozen (SIGSTOP, a long pause, a partition) cannot know it lost
its lease, so renewing is not enough: each taking by a new holder increases the lease's
token, and every write of a pass first checks, inside its own transaction, that the lease
still has its holder and token and has not expired (:meth:`Fence.check`). On PostgreSQL the
check locks the lease row until the write commits, so no takeover fits between them; on
SQLite the write transaction holds the database's write lock from its ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from config.errors import MirrorError
from mirror.schema import leases, sync_runs
from mirror.states import RunKind, RunOutcome


class LeaseHeld(MirrorError):
    """Another process is reconciling; the message names it."""


class LeaseLost(LeaseHeld):
    """This process's lease lapsed and another process took it: the reconcile stopped."""


@dataclass(frozen=True, slots=True)
class Fence:
    """One taking of a lease: what every write of a pass checks before it writes."""

    name: str
    holder: str
    token: int

    def check(self, connection: Connection) -> None:
        """Raise LeaseLost unless the lease is still this taking's, unexpired.

        Call it first in the write's transaction: the row lock (PostgreSQL) or the write
        lock (SQLite) then lasts until the write commits.
        """
        query = select(leases.c.expires_at).where(
            leases.c.name == self.name,
            leases.c.holder == self.holder,
            leases.c.token == self.token,
        )
        if connection.dialect.name == "postgresql":
            query = query.with_for_update()
        expires_at = connection.execute(query).scalar()
        if expires_at is None or _aware(expires_at) <= datetime.now(UTC):
            raise LeaseLost(
                f"the {self.name} lease (token {self.token}) is no longer this process's: "
                "nothing more was written"
            )


@dataclass(frozen=True, slots=True)
class Run:
    id: int
    resource: str
    started_at: datetime
    checkpoint: int  # every page up to this one is applied
    resumed: bool
    kind: RunKind = RunKind.FULL


# Passes over a whole resource; the one that resumes a cut-short pass keeps its kind.
_WHOLE = (RunKind.BACKFILL, RunKind.FULL)
# Outcomes of a pass that listed every page (a held one did: only its sweep waits).
COMPLETE = (RunOutcome.SUCCESS, RunOutcome.HELD)


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
            sync_runs.c.kind.in_(_WHOLE),
            sync_runs.c.outcome.in_(COMPLETE),
        )
        .limit(1)
    ).first()
    kind = RunKind.FULL if had_one is not None else RunKind.BACKFILL
    return _start_or_resume(connection, resource, _WHOLE, kind, resume=True)


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
                row.id, resource, _aware(row.started_at), checkpoint, resumed=True,
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
    connection.execute(update(sync_runs).where(sync_runs.c.id == run_id).values(lease_token=token))


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
    return take_lease(connection, name, holder, ttl_seconds) is not None


def take_lease(connection: Connection, name: str, holder: str, ttl_seconds: float) -> Fence | None:
    """Take (or extend) the lease ``name`` for ``holder``: its fence, or None when someone
    else holds it. A new holder gets the next token; the same holder keeps its own."""
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=ttl_seconds)
    # RETURNING, not rowcount: drivers do not all report rowcount for every statement.
    token = connection.execute(
        update(leases)
        .where(leases.c.name == name, or_(leases.c.holder == holder, leases.c.expires_at < now))
        .values(
            holder=holder,
            expires_at=expires,
            token=case((leases.c.holder == holder, leases.c.token), else_=leases.c.token + 1),
        )
        .returning(leases.c.token)
    ).scalar()
    if token is not None:
        return Fence(name, holder, int(token))
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    # Two processes may both find no lease: the primary key lets only one insert win.
    token = connection.execute(
        dialect.insert(leases)
        .values(name=name, holder=holder, expires_at=expires, token=1)
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(leases.c.token)
    ).scalar()
    return None if token is None else Fence(name, holder, int(token))


def renew_lease(connection: Connection, fence: Fence, ttl_seconds: float) -> bool:
    """Extend the lease of ``fence``'s taking; False once another taking has it."""
    # An expired lease nobody took since is still this taking's to extend: no other holder
    # can have written in between, since any other taking changes the token.
    renewed = connection.execute(
        update(leases)
        .where(
            leases.c.name == fence.name,
            leases.c.holder == fence.holder,
            leases.c.token == fence.token,
        )
        .values(expires_at=datetime.now(UTC) + timedelta(seconds=ttl_seconds))
        .returning(leases.c.token)
    ).first()
    return renewed is not None


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
