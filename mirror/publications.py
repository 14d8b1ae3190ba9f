"""The only writer and reader of ``feed_publications``: where a publisher of the change feed
stands, and how far behind the feed it is.

A publisher's cursor is a feed cursor (``mirror.feed``): every event up to it reached the
broker. It moves only under the publisher's lease (every write checks the lease's fence), so a
publisher that lost its lease while frozen never moves it back or forth.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from mirror.database import as_utc
from mirror.feed import START_CURSOR, backlog
from mirror.leases import Fence
from mirror.schema import feed_publications

__all__ = ["Publication", "PublicationLag", "advance", "between", "lag", "publication",
           "publications"]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Publication:
    name: str
    cursor: str
    published: int
    published_at: datetime | None


@dataclass(frozen=True, slots=True)
class PublicationLag:
    """How far a publisher is behind the feed: events not yet published, and how long the
    oldest of them has waited (0 when there is none)."""

    name: str
    events: int
    seconds: float


def _publication(row: object) -> Publication:
    m = row._mapping  # type: ignore[attr-defined]
    at = m["published_at"]
    return Publication(
        m["name"], m["cursor"], int(m["published"]), None if at is None else as_utc(at)
    )


def publication(connection: Connection, name: str) -> Publication:
    """Where ``name`` stands; a publisher that never published stands at the feed's start."""
    row = connection.execute(
        select(feed_publications).where(feed_publications.c.name == name)
    ).first()
    return Publication(name, START_CURSOR, 0, None) if row is None else _publication(row)


def publications(connection: Connection) -> list[Publication]:
    rows = connection.execute(select(feed_publications).order_by(feed_publications.c.name))
    return [_publication(row) for row in rows]


def advance(connection: Connection, fence: Fence, name: str, cursor: str, published: int) -> None:
    """Move ``name`` to ``cursor``, ``published`` more events; raises LeaseLost (nothing
    written) unless ``fence`` still holds the publisher's lease."""
    fence.check(connection)
    now = datetime.now(UTC)
    moved = connection.execute(
        update(feed_publications)
        .where(feed_publications.c.name == name)
        .values(
            cursor=cursor,
            published=feed_publications.c.published + published,
            published_at=now,
        )
    )
    if moved.rowcount == 0:
        connection.execute(
            insert(feed_publications).values(
                name=name, cursor=cursor, published=published, published_at=now
            )
        )


def between(connection: Connection, earlier: str, later: str) -> int:
    """How many stored events stand after ``earlier`` up to ``later`` (two feed cursors)."""
    return backlog(connection, earlier).events - backlog(connection, later).events


def lag(connection: Connection, now: datetime | None = None) -> list[PublicationLag]:
    """Every publisher's lag behind the feed."""
    now = now or datetime.now(UTC)
    found = []
    for known in publications(connection):
        behind = backlog(connection, known.cursor)
        oldest = behind.oldest_received_at
        seconds = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
        found.append(PublicationLag(known.name, behind.events, seconds))
    return found
