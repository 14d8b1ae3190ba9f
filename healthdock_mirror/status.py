"""``healthdock-mirror status``: what the mirror holds, how fresh it is, what the reconciler healed.

The facts are gathered in one read transaction (:func:`gather_status`) and rendered apart from
it, as rich tables (:func:`render_tables`) or one JSON document for scripts
(:func:`status_document`). Nothing here reads a patient's fields or an event's payload: the
output is counts, identifiers of events and runs, and error texts (which never carry data).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import Connection

from mirror.database import read_transaction
from mirror.schema import appointments, patients, sync_runs, webhook_events
from mirror.states import LOSS_KINDS, UNSETTLED, EventSource, EventStatus

WINDOW = timedelta(days=1)
"""The recent past that event counts and healed totals cover."""

_EVENT_STATUSES = (
    EventStatus.APPLIED,
    EventStatus.IGNORED,
    EventStatus.FAILED,
    EventStatus.PENDING,
)


@dataclass(frozen=True, slots=True)
class RecordCounts:
    live: int
    deleted: int


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One reconcile pass (a ``sync_runs`` row)."""

    id: int
    resource: str
    kind: str
    outcome: str
    started_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None  # None while the pass is running
    pages: int
    records: int
    created: int
    updated: int
    tombstoned: int
    candidates: int
    rate_limited: int
    errors: int
    error: str | None


@dataclass(frozen=True, slots=True)
class Healed:
    """What the passes started in the window changed: each is a change webhooks did not bring."""

    runs: int
    created: int
    updated: int
    tombstoned: int
    rate_limited: int


@dataclass(frozen=True, slots=True)
class UnappliedEvent:
    """An event waiting for an operator (pending or failed); its payload is never shown."""

    seq: int
    source: str
    event_type: str
    status: str
    received_at: datetime
    age_seconds: float
    attempts: int
    error: str | None


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
    healed: Healed  # passes started in the window
    unapplied: dict[str, int]  # pending and failed, whenever received
    oldest_unapplied: UnappliedEvent | None
    last_webhook_at: datetime | None
    runs: list[RunSummary]  # the latest first

    @property
    def seconds_since_last_webhook(self) -> float | None:
        if self.last_webhook_at is None:
            return None
        return _seconds(self.generated_at - self.last_webhook_at)


def gather_status(engine: Engine, *, runs: int = 10, now: datetime | None = None) -> MirrorStatus:
    """The mirror's status as of ``now`` (default: the present), read in one transaction."""
    moment = now or datetime.now(UTC)
    return read_transaction(engine, lambda connection: _gather(connection, runs, moment))


def _gather(connection: Connection, runs: int, now: datetime) -> MirrorStatus:
    window_start = now - WINDOW
    by_status = dict.fromkeys(map(str, _EVENT_STATUSES), 0)
    by_source = dict.fromkeys(map(str, EventSource), 0)
    by_type: dict[str, int] = {}
    recent = connection.execute(
        select(
            webhook_events.c.source,
            webhook_events.c.status,
            webhook_events.c.event_type,
            func.count(),
        )
        .where(webhook_events.c.received_at >= window_start)
        .group_by(webhook_events.c.source, webhook_events.c.status, webhook_events.c.event_type)
    )
    for source, status, event_type, count in recent:
        by_status[status] = by_status.get(status, 0) + count
        by_source[source] = by_source.get(source, 0) + count
        by_type[event_type] = by_type.get(event_type, 0) + count
    unapplied = dict.fromkeys(map(str, UNSETTLED), 0)
    unapplied_rows = connection.execute(
        select(webhook_events.c.status, func.count())
        .where(webhook_events.c.status.in_(UNSETTLED))
        .group_by(webhook_events.c.status)
    )
    for status, count in unapplied_rows:
        unapplied[status] = count
    return MirrorStatus(
        generated_at=now,
        window_start=window_start,
        patients=_record_counts(connection, patients),
        appointments=_record_counts(connection, appointments),
        webhook_events=_count(connection, webhook_events),
        sync_runs=_count(connection, sync_runs),
        events_by_status=by_status,
        events_by_type=dict(sorted(by_type.items())),
        events_by_source=by_source,
        healed=_healed(connection, window_start),
        unapplied=unapplied,
        oldest_unapplied=_oldest_unapplied(connection, now),
        last_webhook_at=_last_webhook_at(connection),
        runs=_latest_runs(connection, runs),
    )


def _count(connection: Connection, table: Any) -> int:
    return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def _record_counts(connection: Connection, table: Any) -> RecordCounts:
    total, deleted = connection.execute(select(func.count(), func.count(table.c.deleted_at))).one()
    return RecordCounts(live=int(total) - int(deleted), deleted=int(deleted))


def _healed(connection: Connection, since: datetime) -> Healed:
    row = connection.execute(
        select(
            func.count(),
            *(
                func.coalesce(func.sum(column), 0)
                for column in (
                    sync_runs.c.created,
                    sync_runs.c.updated,
                    sync_runs.c.tombstoned,
                    sync_runs.c.rate_limited,
                )
            ),
        ).where(sync_runs.c.started_at >= since, sync_runs.c.kind.in_(LOSS_KINDS))
    ).one()
    runs, created, updated, tombstoned, rate_limited = (int(value) for value in row)
    return Healed(runs, created, updated, tombstoned, rate_limited)


def _oldest_unapplied(connection: Connection, now: datetime) -> UnappliedEvent | None:
    row = connection.execute(
        select(
            webhook_events.c.seq,
            webhook_events.c.source,
            webhook_events.c.event_type,
            webhook_events.c.status,
            webhook_events.c.received_at,
            webhook_events.c.attempts,
            webhook_events.c.error,
        )
        .where(webhook_events.c.status.in_(UNSETTLED))
        .order_by(webhook_events.c.received_at, webhook_events.c.seq)
        .limit(1)
    ).first()
    if row is None:
        return None
    received_at = _utc(row.received_at)
    return UnappliedEvent(
        seq=int(row.seq),
        source=row.source,
        event_type=row.event_type,
        status=row.status,
        received_at=received_at,
        age_seconds=_seconds(now - received_at),
        attempts=int(row.attempts),
        error=row.error,
    )


def _last_webhook_at(connection: Connection) -> datetime | None:
    # Walks the received_at index from the newest end to the first event a webhook brought.
    received_at = connection.execute(
        select(webhook_events.c.received_at)
        .where(webhook_events.c.source == EventSource.WEBHOOK)
        .order_by(webhook_events.c.received_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    return None if received_at is None else _utc(received_at)


def _latest_runs(connection: Connection, limit: int) -> list[RunSummary]:
    rows = connection.execute(select(sync_runs).order_by(sync_runs.c.id.desc()).limit(limit))
    summaries = []
    for row in rows:
        started_at = _utc(row.started_at)
        finished_at = None if row.finished_at is None else _utc(row.finished_at)
        duration = None if finished_at is None else _seconds(finished_at - started_at)
        summaries.append(
            RunSummary(
                id=int(row.id),
                resource=row.resource,
                kind=row.kind,
                outcome=row.outcome,
                started_at=started_at,
                finished_at=finished_at,
                duration_seconds=duration,
                pages=row.pages,
                records=row.records,
                created=row.created,
                updated=row.updated,
                tombstoned=row.tombstoned,
                candidates=row.candidates,
                rate_limited=row.rate_limited,
                errors=row.errors,
                error=row.error,
            )
        )
    return summaries


def _utc(moment: datetime) -> datetime:
    # SQLite hands back the naive UTC text it stored.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _seconds(delta: timedelta) -> float:
    return round(delta.total_seconds(), 3)


# --- rendering -------------------------------------------------------------------------------


def status_document(status: MirrorStatus) -> dict[str, Any]:
    """The status as one JSON-ready document: stable keys, ISO 8601 UTC times, seconds."""
    oldest = status.oldest_unapplied
    return {
        "generated_at": _iso(status.generated_at),
        "counts": {
            "patients": {"live": status.patients.live, "deleted": status.patients.deleted},
            "appointments": {
                "live": status.appointments.live,
                "deleted": status.appointments.deleted,
            },
            "webhook_events": status.webhook_events,
            "sync_runs": status.sync_runs,
        },
        "last_day": {
            "since": _iso(status.window_start),
            "events_by_status": status.events_by_status,
            "events_by_type": status.events_by_type,
            "events_by_source": status.events_by_source,
            "healed": {
                "runs": status.healed.runs,
                "created": status.healed.created,
                "updated": status.healed.updated,
                "tombstoned": status.healed.tombstoned,
                "rate_limited": status.healed.rate_limited,
            },
        },
        "unapplied": {
            **status.unapplied,
            "oldest": None
            if oldest is None
            else {
                "seq": oldest.seq,
                "source": oldest.source,
                "event_type": oldest.event_type,
                "status": oldest.status,
                "received_at": _iso(oldest.received_at),
                "age_seconds": oldest.age_seconds,
                "attempts": oldest.attempts,
                "error": oldest.error,
            },
        },
        "last_webhook": {
            "received_at": None if status.last_webhook_at is None else _iso(status.last_webhook_at),
            "age_seconds": status.seconds_since_last_webhook,
        },
        "runs": [
            {
                "id": run.id,
                "resource": run.resource,
                "kind": run.kind,
                "outcome": run.outcome,
                "started_at": _iso(run.started_at),
                "finished_at": None if run.finished_at is None else _iso(run.finished_at),
                "duration_seconds": run.duration_seconds,
                "pages": run.pages,
                "records": run.records,
                "created": run.created,
                "updated": run.updated,
                "tombstoned": run.tombstoned,
                "candidates": run.candidates,
                "rate_limited": run.rate_limited,
                "errors": run.errors,
                "error": run.error,
            }
            for run in status.runs
        ],
    }


def render_tables(status: MirrorStatus, console: Console) -> None:
    """The status as tables for an operator's terminal."""
    console.print(_counts_table(status))
    console.print(_events_table(status))
    console.print(_healed_table(status))
    console.print(_runs_table(status))
    # Below the table, whole: an error (a mass-delete brake's reason) can be a sentence.
    for run in status.runs:
        if run.error:
            console.print(Text(f"run {run.id} ({run.resource}, {run.outcome}): {run.error}"))
    console.print(_lag_table(status))


def _counts_table(status: MirrorStatus) -> Table:
    table = _table("mirror", "table", "live", "deleted", "total")
    for name, counts in (("patients", status.patients), ("appointments", status.appointments)):
        _row(table, name, counts.live, counts.deleted, counts.live + counts.deleted)
    _row(table, "webhook_events", "", "", status.webhook_events)
    _row(table, "sync_runs", "", "", status.sync_runs)
    return table


def _events_table(status: MirrorStatus) -> Table:
    table = _table("events received in the last 24 h", "by", "value", "events")
    groups = (
        ("status", status.events_by_status),
        ("source", status.events_by_source),
        ("type", status.events_by_type),
    )
    for group, counts in groups:
        if not counts:
            _row(table, group, "none", 0)
        for value, count in counts.items():
            _row(table, group, value, count)
        table.add_section()
    return table


def _healed_table(status: MirrorStatus) -> Table:
    healed = status.healed
    table = _table(
        "webhook loss: healed in the last 24 h",
        "passes", "created", "updated", "tombstoned", "429s",
    )  # fmt: skip
    _row(table, healed.runs, healed.created, healed.updated, healed.tombstoned,
         healed.rate_limited)  # fmt: skip
    return table


def _runs_table(status: MirrorStatus) -> Table:
    table = _table(
        f"last {len(status.runs)} sync runs" if status.runs else "sync runs: never",
        "run", "resource", "kind", "started (UTC)", "duration", "outcome", "pages", "records",
        "created", "updated", "tombstoned", "429s",
    )  # fmt: skip
    for run in status.runs:
        _row(
            table, run.id, run.resource, run.kind, _shown(run.started_at, zone=False),
            "running" if run.duration_seconds is None else _human(run.duration_seconds),
            run.outcome, run.pages, run.records, run.created, run.updated, run.tombstoned,
            run.rate_limited,
        )  # fmt: skip
    return table


def _lag_table(status: MirrorStatus) -> Table:
    table = _table("event log", "what", "value")
    last = status.last_webhook_at
    since = status.seconds_since_last_webhook
    shown = "never" if last is None or since is None else f"{_shown(last)} ({_human(since)} ago)"
    _row(table, "last webhook", shown)
    for state in UNSETTLED:
        _row(table, f"{state} events", status.unapplied[state])
    oldest = status.oldest_unapplied
    if oldest is None:
        _row(table, "oldest unapplied", "none")
        return table
    _row(
        table,
        "oldest unapplied",
        f"seq {oldest.seq} {oldest.event_type} ({oldest.source}, {oldest.status}, "
        f"{oldest.attempts} attempts), received {_shown(oldest.received_at)} "
        f"({_human(oldest.age_seconds)} ago)",
    )
    if oldest.error:
        _row(table, "its error", oldest.error)
    return table


_NUMERIC = frozenset({"live", "deleted", "total", "events", "passes", "created", "updated",
                      "tombstoned", "429s", "run", "duration", "pages", "records"})  # fmt: skip


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in _NUMERIC else "left")
    return table


def _row(table: Table, *values: object) -> None:
    # As plain text: an event type is whatever a signed body said, and must not be read as
    # rich markup (``[/x]`` would raise, ``[link=...]`` would render).
    table.add_row(*(Text(str(value)) for value in values))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _shown(moment: datetime, *, zone: bool = True) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S" + (" UTC" if zone else ""))


def _human(seconds: float) -> str:
    """``0.4s``, ``12s``, ``3m 05s``, ``2h 04m``, ``3d 02h``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
