"""The only writer and reader of ``feed_publications``: where a publisher of the change feed
stands, and how far behind the feed it is.

A publisher's cursor is a feed cursor (``mirror.feed``): every event up to it reached the
broker, the last of them at the broker's ``stream_seq``. It moves only under the publisher's
lease (every write checks the lease's fence), so a publisher that lost its lease while frozen
never moves it back or forth.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from mirror.database import as_utc
from mirror.feed import START_CURSOR, backlog, count_between
from mirror.leases import Fence
from mirror.schema import feed_publications

__all__ = ["Publication", "PublicationLag", "advance", "between", "lag", "publication",
           "publications", "register"]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Publication:
    name: str
    cursor: str
    published: int
    published_at: datetime | None
    stream_seq: int  # the broker's sequence of the last event published (0: none yet)


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
        m["name"], m["cursor"], int(m["published"]), None if at is None else as_utc(at),
        int(m["stream_seq"]),
    )  # fmt: skip


def publication(connection: Connection, name: str) -> Publication:
    """Where ``name`` stands; a publisher that never published stands at the feed's start."""
    row = connection.execute(
        select(feed_publications).where(feed_publications.c.name == name)
    ).first()
    return Publication(name, START_CURSOR, 0, None, 0) if row is None else _publication(row)


def publications(connection: Connection) -> list[Publication]:
    rows = connection.execute(select(feed_publications).order_by(feed_publications.c.name))
    return [_publication(row) for row in rows]


def register(connection: Connection, name: str) -> None:
    """A publisher that starts: its lag shows from now on, before it published anything."""
    known = select(feed_publications.c.name).where(feed_publications.c.name == name)
    if connection.execute(known).first() is None:
        connection.execute(insert(feed_publications).values(name=name, cursor=START_CURSOR))


def advance(
    connection: Connection,
    fence: Fence,
    name: str,
    cursor: str,
    published: int,
    stream_seq: int,
) -> None:
    """Move ``name`` to ``cursor`` (the broker's ``stream_seq``), ``published`` more events;
    raises LeaseLost (nothing written) unless ``fence`` still holds the publisher's lease."""
    fence.check(connection)
    values = {"cursor": cursor, "published_at": datetime.now(UTC), "stream_seq": stream_seq}
    moved = connection.execute(
        update(feed_publications)
        .where(feed_publications.c.name == name)
        .values(published=feed_publications.c.published + published, **values)
    )
    if moved.rowcount == 0:
        connection.execute(
            insert(feed_publications).values(name=name, published=published, **values)
        )


def between(connection: Connection, earlier: str, later: str) -> int:
    """How many stored events stand after ``earlier`` up to ``later`` (two feed cursors)."""
    return count_between(connection, earlier, later)


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
