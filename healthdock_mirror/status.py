"""``healthdock-mirror status``: what the mirror holds, how fresh it is, what the reconciler healed.

The facts are gathered by the core in one read transaction (``mirror.gather_status``, which
the console's overview shows too) and rendered here, as rich tables (:func:`render_tables`)
or one JSON document for scripts (:func:`status_document`). Nothing here reads a patient's
fields or an event's payload: the output is counts, identifiers of events and runs, and error
texts (which never carry data).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mirror import MirrorStatus, gather_status, local_dates

__all__ = ["gather_status", "render_tables", "status_document"]

# --- rendering -------------------------------------------------------------------------------


def status_document(status: MirrorStatus) -> dict[str, Any]:
    """The status as one JSON-ready document: stable keys, ISO 8601 UTC times, seconds."""
    oldest = status.oldest_unapplied
    zone_advice = local_dates.zone_advice(status.local_date_zone, status.configured_zone)
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
                "age_seconds": status.oldest_unapplied_age_seconds,
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
        "publishers": [
            {"name": lag.name, "lag_events": lag.events, "lag_seconds": round(lag.seconds, 3)}
            for lag in status.publishers
        ],
        "local_dates": {
            "zone": status.local_date_zone,
            "configured_zone": status.configured_zone,
            "current": zone_advice is None,
        },
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
    if status.publishers:
        console.print(_publishers_table(status))
    advice = local_dates.zone_advice(status.local_date_zone, status.configured_zone)
    if advice is not None:
        console.print(Text(advice, style="yellow"))


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
    for state in status.unapplied:
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
        f"({_human(status.oldest_unapplied_age_seconds or 0)} ago)",
    )
    if oldest.error:
        _row(table, "its error", oldest.error)
    return table


def _publishers_table(status: MirrorStatus) -> Table:
    table = _table("change feed publishers", "publisher", "events behind", "seconds behind")
    for lag in status.publishers:
        _row(table, lag.name, lag.events, f"{lag.seconds:.1f}")
    return table


_NUMERIC = frozenset({"live", "deleted", "total", "events", "passes", "created", "updated",
                      "tombstoned", "429s", "run", "duration", "pages", "records",
                      "events behind", "seconds behind"})  # fmt: skip


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
