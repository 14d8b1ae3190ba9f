"""The only writer and reader of ``sync_requests``: reconciles an operator asked for.

The console (in the receiver) cannot run a reconcile itself (that is the scheduler's, in
``serve`` or in a ``worker``, under the lease), so it leaves a request; the scheduler takes the
oldest waiting one, runs it, and records the outcome. A request taken by a process that died
is taken again after ``STALE_AFTER``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, or_, select, update
from sqlalchemy.engine import Connection

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
    requested_by: str
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    outcome: str | None


def _request(row: object) -> SyncRequest:
    m = row._mapping  # type: ignore[attr-defined]
    return SyncRequest(
        int(m["id"]), m["resource"], bool(m["allow_mass_delete"]), str(m["requested_by"]),
        as_utc(m["requested_at"]),
        None if m["started_at"] is None else as_utc(m["started_at"]),
        None if m["finished_at"] is None else as_utc(m["finished_at"]), m["outcome"],
    )  # fmt: skip


def request_sync(
    connection: Connection, resource: str | None, *, allow_mass_delete: bool, actor: str
) -> int:
    return int(
        connection.execute(
            insert(sync_requests)
            .values(resource=resource, allow_mass_delete=allow_mass_delete, requested_by=actor,
                    requested_at=datetime.now(UTC))
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
    return _request(row)


def put_back(connection: Connection, request_id: int) -> None:
    """Another reconcile holds the lease: the request waits for the next look."""
    connection.execute(
        update(sync_requests).where(sync_requests.c.id == request_id).values(started_at=None)
    )


def finish_request(connection: Connection, request_id: int, outcome: str) -> None:
    connection.execute(
        update(sync_requests)
        .where(sync_requests.c.id == request_id)
        .values(finished_at=datetime.now(UTC), outcome=outcome[:16])
    )


def recent_requests(connection: Connection, limit: int = 20) -> list[SyncRequest]:
    rows = connection.execute(
        select(sync_requests).order_by(sync_requests.c.id.desc()).limit(limit)
    )
    return [_request(row) for row in rows]
