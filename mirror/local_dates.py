"""appointments.local_date in a new zone, and the zone the rows were computed in.

Every writer computes local_date in its engine's zone (``HEALTHDOCK_TIMEZONE``: see
``mirror.database.local_timezone``), so after the setting changes only the rows written since
follow it. :func:`recompute_local_dates` (``healthdock-mirror local-dates``) brings every row to
the zone, then records it in ``mirror_settings``; ``status``, and the commands that write the
mirror at their start, compare the configured zone with that record (:func:`local_date_zone`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from mirror.database import read_transaction, write_transaction
from mirror.records import refresh_local_dates
from mirror.schema import appointments, mirror_settings

__all__ = ["DEFAULT_BATCH", "LOCAL_DATE_TIMEZONE", "Recomputed", "local_date_zone",
           "recompute_local_dates", "zone_advice"]  # fmt: skip

LOCAL_DATE_TIMEZONE = "local_date_timezone"
"""The row of ``mirror_settings`` that names the zone of appointments.local_date."""

# Appointments a transaction rewrites: short enough that a webhook waiting on SQLite's lock
# (or on a row lock in PostgreSQL) waits milliseconds, not seconds.
DEFAULT_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Recomputed:
    read: int  # appointments looked at
    changed: int  # of them, those whose local_date was rewritten


def recompute_local_dates(
    engine: Engine,
    zone: ZoneInfo,
    *,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> Recomputed:
    """Set every appointment's local_date in ``zone``, then record ``zone`` as theirs.

    Keyset batches by id, each its own write transaction, so memory stays flat and writers
    are held up for one batch at most. Idempotent: run again, it changes nothing. Interrupted,
    the zone is not recorded and a new run starts over. ``progress`` is told (done, total).
    """
    total = read_transaction(engine, _appointment_count)
    if progress is not None:
        progress(0, total)
    after: str | None = None
    read = changed = 0
    while True:
        done = write_transaction(
            engine, functools.partial(refresh_local_dates, zone=zone, after=after, limit=batch)
        )
        if done.last_id is None:
            break
        after, read, changed = done.last_id, read + done.read, changed + done.changed
        if progress is not None:
            # Appointments created meanwhile may take the count past the one taken first.
            progress(read, max(total, read))
        if done.read < batch:
            break
    write_transaction(engine, lambda connection: _record_zone(connection, zone))
    return Recomputed(read, changed)


def local_date_zone(connection: Connection) -> str | None:
    """The zone appointments.local_date was last computed in, as recorded; None if unknown."""
    return connection.execute(
        select(mirror_settings.c.value).where(mirror_settings.c.name == LOCAL_DATE_TIMEZONE)
    ).scalar_one_or_none()


def zone_advice(stored: str | None, configured: str) -> str | None:
    """What an operator must do when local dates were computed in another zone than the
    configured one; None when they agree."""
    if stored == configured:
        return None
    return (
        f"appointments.local_date is in {stored or 'an unrecorded zone'} but "
        f"HEALTHDOCK_TIMEZONE is {configured}: run healthdock-mirror local-dates"
    )


def _appointment_count(connection: Connection) -> int:
    return int(connection.execute(select(func.count()).select_from(appointments)).scalar_one())


def _record_zone(connection: Connection, zone: ZoneInfo) -> None:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(mirror_settings).values(
        name=LOCAL_DATE_TIMEZONE, value=zone.key, changed_at=datetime.now(UTC)
    )
    # changed_at says when the zone changed: a run in the same zone leaves it.
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=["name"],
            set_={"value": statement.excluded.value, "changed_at": statement.excluded.changed_at},
            where=mirror_settings.c.value != statement.excluded.value,
        )
    )
