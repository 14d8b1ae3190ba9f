"""The only writer and reader of ``sync_requests``: reconciles an operator asked for.

The console (in the receiver) cannot run a reconcile itself (that is the scheduler's, in
``serve`` or in a ``worker``, under the lease), so it leaves a request; the scheduler takes the
oldest waiting one, runs it, and records the outcome. A request taken by a process that died
is taken again after ``STALE_AFTER``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import ColumnElement

from mirror.database import as_utc
from mirror.schema import sync_requests

__all__ = ["STALE_AFTER", "SyncRequest", "finish_request", "put_back", "recent_requests",
           "request_sync", "take_request"]  # fmt: skip

STALE_AFTER = timedelta(minutes=30)


@dataclass(frozen=True, slots=True)
class SyncRequest:
    id: int
    resource: str | None  # None: both
    allow_mass_delete: bool
    held_run_id: int | None  # a release: the held pass the operator looked at
    requested_by: str
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    outcome: str | None


def _request(row: object) -> SyncRequest:
    m = row._mapping  # type: ignore[attr-defined]
    return SyncRequest(
        int(m["id"]), m["resource"], bool(m["allow_mass_delete"]),
        None if m["held_run_id"] is None else int(m["held_run_id"]), str(m["requested_by"]),
        as_utc(m["requested_at"]),
        None if m["started_at"] is None else as_utc(m["started_at"]),
        None if m["finished_at"] is None else as_utc(m["finished_at"]), m["outcome"],
    )  # fmt: skip


def request_sync(
    connection: Connection,
    resource: str | None,
    *,
    allow_mass_delete: bool,
    actor: str,
    held_run_id: int | None = None,
) -> int:
    return int(
        connection.execute(
            insert(sync_requests)
            .values(resource=resource, allow_mass_delete=allow_mass_delete, requested_by=actor,
                    held_run_id=held_run_id, requested_at=datetime.now(UTC))
            .returning(sync_requests.c.id)
        ).scalar_one()
    )  # fmt: skip


def take_request(connection: Connection) -> SyncRequest | None:
    """The oldest request waiting (or taken long ago by a process that died), now taken."""
    now = datetime.now(UTC)
    c = sync_requests.c
    query = (
        select(sync_requests)
        .where(c.finished_at.is_(None),
               or_(c.started_at.is_(None), c.started_at < now - STALE_AFTER))
        .order_by(c.id)
        .limit(1)
    )  # fmt: skip
    if connection.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    row = connection.execute(query).first()
    if row is None:
        return None
    connection.execute(update(sync_requests).where(c.id == row.id).values(started_at=now))
    taken = _request(row)
    # started_at is the claim: put_back and finish_request touch the request only while it
    # is still this taking's (a process that took it over after STALE_AFTER has another).
    return _with_claim(taken, now)


def _with_claim(request: SyncRequest, claimed_at: datetime) -> SyncRequest:
    return dataclasses.replace(request, started_at=claimed_at)


def _claimed(request: SyncRequest) -> ColumnElement[bool]:
    c = sync_requests.c
    return and_(c.id == request.id, c.started_at == request.started_at, c.finished_at.is_(None))


def put_back(connection: Connection, request: SyncRequest) -> None:
    """Another reconcile holds the lease: the request waits for the next look."""
    connection.execute(update(sync_requests).where(_claimed(request)).values(started_at=None))


def finish_request(connection: Connection, request: SyncRequest, outcome: str) -> None:
    connection.execute(
        update(sync_requests)
        .where(_claimed(request))
        .values(finished_at=datetime.now(UTC), outcome=outcome[:16])
    )


def recent_requests(connection: Connection, limit: int = 20) -> list[SyncRequest]:
    rows = connection.execute(
        select(sync_requests).order_by(sync_requests.c.id.desc()).limit(limit)
    )
    return [_request(row) for row in rows]
