"""The only writer and reader of ``leases``: who may reconcile, and the fence of their writes.

A lease makes sure one reconcile runs at a time across every process that shares the
database: taken when free or expired, renewed as the pass goes, released at the end. A holder
that dies stops renewing, and the lease expires for another to take over.

**Fencing.** A holder that is frozen (SIGSTOP, a long pause, a partition) cannot know it lost
its lease, so renewing is not enough: each taking by a new holder increases the lease's
token, and every write of a pass first checks, inside its own transaction, that the lease
still has its holder and token and has not expired (:meth:`Fence.check`). On PostgreSQL the
check locks the lease row until the write commits, so no takeover fits between them; on
SQLite the write transaction holds the database's write lock from its ``BEGIN IMMEDIATE``.

**Liveness** has one definition, :func:`_live`: a lease is held while ``expires_at`` is
later than now. Taking, checking, and reporting the holder all use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, case, not_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import BindParameter, ColumnElement

from config import MirrorError
from mirror.schema import leases

__all__ = [
    "Fence",
    "LeaseHeld",
    "LeaseLost",
    "acquire_lease",
    "lease_holder",
    "lease_holders",
    "release_lease",
    "renew_lease",
    "take_lease",
]


class LeaseHeld(MirrorError):
    """Another process is reconciling; the message names it."""


class LeaseLost(LeaseHeld):
    """This process's lease lapsed and another process took it: the reconcile stopped."""


def _live(now: datetime | BindParameter[datetime]) -> ColumnElement[bool]:
    return leases.c.expires_at > now


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
        locked = connection.dialect.name == "postgresql"
        query = _FENCE_CHECK_LOCKED if locked else _FENCE_CHECK
        taking = {"name": self.name, "holder": self.holder, "token": self.token}
        if connection.execute(query, {**taking, "now": datetime.now(UTC)}).first() is None:
            raise LeaseLost(
                f"the {self.name} lease (token {self.token}) is no longer this process's: "
                "nothing more was written"
            )


# Built once, its values bound: every write of a pass checks its fence.
_FENCE_CHECK = select(leases.c.token).where(
    leases.c.name == bindparam("name"),
    leases.c.holder == bindparam("holder"),
    leases.c.token == bindparam("token"),
    _live(bindparam("now", type_=leases.c.expires_at.type)),
)
_FENCE_CHECK_LOCKED = _FENCE_CHECK.with_for_update()


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
        .where(leases.c.name == name, or_(leases.c.holder == holder, not_(_live(now))))
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
        .where(leases.c.name == name, leases.c.holder == holder)
        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )


def lease_holder(connection: Connection, name: str) -> str | None:
    """Who holds the lease ``name`` now; None while nobody does."""
    holder = connection.execute(
        select(leases.c.holder).where(leases.c.name == name, _live(datetime.now(UTC)))
    ).scalar()
    return None if holder is None else str(holder)


def lease_holders(connection: Connection) -> list[tuple[str, str]]:
    """Every lease held now, as (name, holder), by name."""
    rows = connection.execute(
        select(leases.c.name, leases.c.holder)
        .where(_live(datetime.now(UTC)))
        .order_by(leases.c.name)
    )
    return [(str(name), str(holder)) for name, holder in rows]
