"""The only writer and reader of ``audit_log``: who saw which patient's data, who changed what.

A row is appended for every request that returns patient data (a feed page, a record or a
payload shown in the console) or changes state (replay, sync now, release, a token created or
revoked, a console login or failed login), in the same transaction as nothing else: it commits
before the data leaves, so a reader the database could not record is refused. Rows hold ids
only (record ids, event seqs, run ids), never a patient's fields. Nothing updates a row (a
trigger refuses it); :func:`prune_audit` alone deletes, when ``HEALTHDOCK_AUDIT_RETENTION_DAYS``
is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.engine import Connection

from mirror.database import as_utc, write_transaction
from mirror.schema import audit_log
from mirror.states import ADMIN_ROLE, AuditAction, AuditOutcome

__all__ = ["MAX_TARGET", "AuditEntry", "AuditRow", "prune_audit", "read_audit", "record_audit"]

# A feed page names up to 1,000 seqs; its target is their range, not a list.
MAX_TARGET = 2000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    actor: str
    role: str
    action: str  # an AuditAction
    target: str | None
    client: str | None
    outcome: AuditOutcome = AuditOutcome.OK


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: datetime
    actor: str
    role: str
    action: str
    target: str | None
    client: str | None
    outcome: str


def record_audit(connection: Connection, entry: AuditEntry) -> None:
    target = entry.target
    if target is not None and len(target) > MAX_TARGET:
        target = target[: MAX_TARGET - 1] + "…"
    connection.execute(
        insert(audit_log).values(
            at=datetime.now(UTC),
            actor=entry.actor[:64],
            role=entry.role[:16],
            action=entry.action[:32],
            target=target,
            client=None if entry.client is None else entry.client[:64],
            outcome=entry.outcome,
        )
    )


def read_audit(
    connection: Connection,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    actor: str | None = None,
    actions: Sequence[str] = (),
    before_id: int | None = None,
    limit: int = 100,
) -> list[AuditRow]:
    """Rows matching every filter given, the newest first; ``before_id`` pages on (keyset)."""
    c = audit_log.c
    query = select(audit_log).order_by(c.id.desc()).limit(limit)
    if since is not None:
        query = query.where(c.at >= since)
    if until is not None:
        query = query.where(c.at < until)
    if actor is not None:
        query = query.where(c.actor == actor)
    if actions:
        query = query.where(c.action.in_(list(actions)))
    if before_id is not None:
        query = query.where(c.id < before_id)
    return [
        AuditRow(
            int(row.id),
            as_utc(row.at),
            row.actor,
            row.role,
            row.action,
            row.target,
            row.client,
            row.outcome,
        )
        for row in connection.execute(query)
    ]


def prune_audit(engine: Engine, older_than: timedelta) -> int:
    """Delete the rows older than ``older_than``; return how many. Retention's alone, and
    itself on the trail: a row says when, up to what and how many (in the same transaction)."""
    cutoff = datetime.now(UTC) - older_than

    def prune(connection: Connection) -> int:
        removed = int(connection.execute(delete(audit_log).where(audit_log.c.at < cutoff)).rowcount)
        if removed:
            target = f"{removed} rows before {cutoff.isoformat(timespec='seconds')}"
            record_audit(connection, AuditEntry("retention", ADMIN_ROLE, AuditAction.AUDIT_PRUNE,
                                                target, None))  # fmt: skip
        return removed

    return write_transaction(engine, prune)
