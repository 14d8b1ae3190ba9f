"""The mirror's status: what it holds, how fresh it is, what the reconciler healed.

Gathered in one read transaction; ``healthdock-mirror status`` renders it (tables or JSON) and
the console's overview shows the same figures. Counts, identifiers and error texts only: no
patient's fields, no event's payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from mirror import publications, runs
from mirror.database import local_timezone, read_transaction
from mirror.eventlog import (
    UnsettledEvent,
    event_count,
    event_counts,
    last_received,
    oldest_unsettled,
    unsettled_counts,
)
from mirror.events import Resource
from mirror.local_dates import local_date_zone
from mirror.records import RecordCounts, record_counts
from mirror.states import EventSource, EventStatus

WINDOW = timedelta(days=1)
"""The recent past that event counts and healed totals cover."""

# The order status shows them in: the usual first.
_EVENT_STATUSES = (
    EventStatus.APPLIED,
    EventStatus.IGNORED,
    EventStatus.FAILED,
    EventStatus.PENDING,
)


@dataclass(frozen=True, slots=True)
class MirrorStatus:
    generated_at: datetime
    window_start: datetime
    patients: RecordCounts
    appointments: RecordCounts
    webhook_events: int
    sync_runs: int
    events_by_status: dict[str, int]  # received in the window
    events_by_type: dict[str, int]
    events_by_source: dict[str, int]
    healed: runs.Healed  # passes started in the window
    unapplied: dict[str, int]  # pending and failed, whenever received
    oldest_unapplied: UnsettledEvent | None  # its payload is never shown
    last_webhook_at: datetime | None
    runs: list[runs.RunSummary]  # the latest first
    # Publishers of the change feed (NATS JetStream): how far behind the feed each is.
    publishers: list[publications.PublicationLag]
    # The zone appointments.local_date was computed in (None: not recorded), and the one this
    # engine's writers use (HEALTHDOCK_TIMEZONE): `healthdock-mirror local-dates` aligns them.
    local_date_zone: str | None
    configured_zone: str

    @property
    def seconds_since_last_webhook(self) -> float | None:
        if self.last_webhook_at is None:
            return None
        return _seconds(self.generated_at - self.last_webhook_at)

    @property
    def oldest_unapplied_age_seconds(self) -> float | None:
        if self.oldest_unapplied is None:
            return None
        return _seconds(self.generated_at - self.oldest_unapplied.received_at)


def gather_status(engine: Engine, *, runs: int = 10, now: datetime | None = None) -> MirrorStatus:
    """The mirror's status as of ``now`` (default: the present), read in one transaction."""
    moment = now or datetime.now(UTC)
    return read_transaction(engine, lambda connection: _gather(connection, runs, moment))


def _gather(connection: Connection, run_count: int, now: datetime) -> MirrorStatus:
    window_start = now - WINDOW
    recent = event_counts(connection, window_start)
    return MirrorStatus(
        generated_at=now,
        window_start=window_start,
        patients=record_counts(connection, Resource.PATIENT),
        appointments=record_counts(connection, Resource.APPOINTMENT),
        webhook_events=event_count(connection),
        sync_runs=runs.run_count(connection),
        events_by_status={status: recent.by_status[status] for status in _EVENT_STATUSES},
        events_by_type=recent.by_type,
        events_by_source=recent.by_source,
        healed=runs.healed(connection, window_start),
        unapplied=unsettled_counts(connection),
        oldest_unapplied=oldest_unsettled(connection),
        last_webhook_at=last_received(connection, EventSource.WEBHOOK),
        runs=runs.latest_runs(connection, run_count),
        publishers=publications.lag(connection, now),
        local_date_zone=local_date_zone(connection),
        configured_zone=local_timezone(connection).key,
    )


def _seconds(delta: timedelta) -> float:
    return round(delta.total_seconds(), 3)
