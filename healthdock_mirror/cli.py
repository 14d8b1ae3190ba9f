"""``healthdock-mirror``: each command parses its arguments, builds settings, calls one function."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import click
from sqlalchemy import Engine

from config import ConfigurationError, settle_after_startup
from healthdock_mirror.access_commands import (
    audit,
    describe_selection,
    record_cli_action,
    token,
)
from healthdock_mirror.context import configure_logs as _configure_logging
from healthdock_mirror.context import current_schema as _current_schema
from healthdock_mirror.context import database as _database
from healthdock_mirror.context import ensure_schema as _ensure_schema
from healthdock_mirror.context import existing_mirror as _existing_mirror
from healthdock_mirror.context import instant as _instant
from healthdock_mirror.context import settings_or_exit as _settings
from healthdock_mirror.context import warn_of_other_local_date_zone as _warn_of_other_zone
from healthdock_mirror.export_commands import export
from healthdock_mirror.oauth_commands import oauth_group
from mirror import (
    REPLAY_SKIPPED,
    REPLAYABLE_SOURCES,
    AuditAction,
    Effect,
    EventStatus,
    Resource,
    current_revision,
    head_revision,
    upgrade,
)


class _CommandLine(click.Group):
    """The command group, which settles the process's garbage collector when run as a program.

    The console script and ``python -m healthdock_mirror`` call the group; click's test runner
    calls its ``main`` method, so the tests' own process is left as it is.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        settle_after_startup()  # the modules of every command are imported by now
        return self.main(*args, **kwargs)


@click.group(cls=_CommandLine)
@click.version_option(package_name="healthdock-mirror")
def main() -> None:
    """Keep a local, queryable mirror of a hospital's HealthDock data."""


@main.command()
def migrate() -> None:
    """Create or upgrade the mirror's tables to the current schema."""
    settings = _settings()
    _configure_logging(settings)
    with _database(settings) as engine:
        before = current_revision(engine)
        upgrade(engine)
    head = head_revision()
    click.echo(
        f"schema at {head}"
        + (" (already current)" if before == head else f" (was {before or 'empty'})")
    )


@main.command()
@click.option("--host", help="Address to bind (default HEALTHDOCK_HOST, 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default HEALTHDOCK_PORT, 8080).")
@click.option("--access-log/--no-access-log", default=False, help="Log every request line.")
@click.option("--scheduler/--no-scheduler", default=True, help="Also run the reconcile jobs.")
def serve(host: str | None, port: int | None, access_log: bool, scheduler: bool) -> None:
    """Run the webhook receiver (and the reconcile scheduler, unless told not to)."""
    from receiver import Metrics, create_app
    from receiver import serve as serve_receiver

    settings = _settings(host=host, port=port)
    _configure_logging(settings)
    _ensure_schema(settings)
    _warn_of_other_zone(settings)
    metrics = Metrics()
    services = []
    if scheduler and not settings.reconciles:
        logging.getLogger(__name__).warning(
            "HEALTHDOCK_API_KEY is not set (nor HEALTHDOCK_API_AUTH=oauth): serving without the "
            "reconcile scheduler"
        )
    elif scheduler:
        from sync import running_scheduler

        # The scheduler's reconciles report HealthDock's rate budget to the receiver's metrics.
        services.append(
            functools.partial(
                running_scheduler, settings, on_rate_budget=metrics.observe_rate_budget
            )
        )
    if settings.nats_url is not None:
        from publisher import running_publisher

        services.append(functools.partial(running_publisher, settings))
    serve_receiver(
        create_app(settings, services=services, metrics=metrics), settings, access_log=access_log
    )


@main.command()
def worker() -> None:
    """Run only the reconcile scheduler (no receiver) until interrupted; with
    HEALTHDOCK_NATS_URL, the change feed's publisher too."""
    settings = _settings()
    _configure_logging(settings)
    if not settings.reconciles:
        raise click.ClickException(
            "HEALTHDOCK_API_KEY: needed to reconcile with HealthDock (or HEALTHDOCK_API_AUTH=oauth)"
        )
    _ensure_schema(settings)
    _warn_of_other_zone(settings)

    async def run(engine: Engine) -> None:
        stop = _stop_on_signals()
        from sync import running_scheduler

        async with contextlib.AsyncExitStack() as services:
            await services.enter_async_context(running_scheduler(settings, engine))
            if settings.nats_url is not None:
                from publisher import running_publisher

                await services.enter_async_context(running_publisher(settings, engine))
            await stop.wait()

    with _database(settings) as engine:
        asyncio.run(run(engine))


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


@main.command()
def publish() -> None:
    """Publish the change feed to NATS JetStream (HEALTHDOCK_NATS_URL) until interrupted: every
    event once, in feed order. One publisher at a time runs; others wait to take over."""
    from publisher import Publisher, StreamConflict

    settings = _settings()
    _configure_logging(settings)
    if settings.nats_url is None:
        raise click.ClickException("HEALTHDOCK_NATS_URL: needed to publish the change feed")
    _ensure_schema(settings)

    async def run(engine: Engine) -> None:
        await Publisher(settings, engine).run(_stop_on_signals())

    with _database(settings) as engine:
        try:
            asyncio.run(run(engine))
        except StreamConflict as error:
            raise click.ClickException(str(error)) from None


_RESOURCES = {"patients": Resource.PATIENT, "appointments": Resource.APPOINTMENT}


@main.command()
@click.argument("resource", required=False, type=click.Choice(sorted(_RESOURCES)))
@click.option(
    "--allow-mass-delete",
    is_flag=True,
    help="Release the mass-delete brake for this run (after checking HealthDock).",
)
def sync(resource: str | None, allow_mass_delete: bool) -> None:
    """Reconcile the mirror with HealthDock's API now (both resources unless one is named)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from mirror import RunOutcome
    from sync import LeaseHeld, run_reconcile

    settings = _settings()
    _configure_logging(settings)
    _ensure_schema(settings)
    _warn_of_other_zone(settings)
    resources = [_RESOURCES[resource]] if resource else list(_RESOURCES.values())
    console = Console(stderr=True)
    with _database(settings) as engine, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=False,
    ) as bar:  # fmt: skip
        tasks = {r: bar.add_task(f"{r.value}s", total=None) for r in resources}

        def progress(r: Resource) -> Callable[[int, int], None]:
            return lambda done, total: bar.update(tasks[r], completed=done, total=total or None)

        what = ", ".join(r.value for r in resources)
        action = AuditAction.SYNC_RELEASE if allow_mass_delete else AuditAction.SYNC_REQUEST
        record_cli_action(engine, action, what + (" (brake released)" if allow_mass_delete else ""))
        try:
            results = asyncio.run(
                run_reconcile(
                    settings, engine, resources, allow_mass_delete=allow_mass_delete,
                    progress=progress,
                )
            )  # fmt: skip
        except (LeaseHeld, ConfigurationError) as error:
            raise click.ClickException(str(error)) from None
    table = Table(title="reconcile")
    for column in ("resource", "run", "outcome", "pages", "records", "created", "updated",
                   "tombstoned", "candidates"):  # fmt: skip
        table.add_column(
            column, justify="right" if column not in ("resource", "outcome") else "left"
        )
    for result in results:
        table.add_row(
            result.resource, str(result.run_id), result.outcome, str(result.pages),
            str(result.records), str(result.created), str(result.updated),
            str(result.tombstoned), str(result.candidates),
        )  # fmt: skip
    # Piped into a file or a script, rich would squeeze the table into 80 columns.
    Console(width=None if sys.stdout.isatty() else 140).print(table)
    problems = [r for r in results if r.outcome != RunOutcome.SUCCESS]
    for result in problems:
        console.print(f"[red]{result.resource}: {result.outcome}: {result.error}[/red]")
    if problems:
        raise SystemExit(1)


@main.command("local-dates")
@click.option(
    "--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True,
    help="Appointments per transaction.",
)  # fmt: skip
def local_dates_command(batch_size: int) -> None:
    """Recompute every appointment's local_date in HEALTHDOCK_TIMEZONE, after changing it.

    Restart serve and worker with the new zone first (they write new rows in theirs). Short
    transactions, so the receiver keeps taking webhooks meanwhile; run again, nothing changes.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mirror import local_dates, read_transaction

    settings = _settings()
    _configure_logging(settings)
    _existing_mirror(settings)
    zone = settings.local_timezone
    with _database(settings) as engine, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=Console(stderr=True), transient=False,
    ) as bar:  # fmt: skip
        _current_schema(engine)  # a fix for a mirror, never a migration
        before = read_transaction(engine, local_dates.local_date_zone)
        task = bar.add_task(f"appointments in {zone.key}", total=None)
        result = local_dates.recompute_local_dates(
            engine,
            zone,
            batch=batch_size,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    was = "" if before == zone.key else f" (was {before or 'not recorded'})"
    click.echo(
        f"local_date in {zone.key}{was}: {result.changed} of {result.read} appointments changed"
    )


@main.command()
@click.option(
    "--runs", "run_count", type=click.IntRange(min=0), default=10, show_default=True,
    help="How many of the latest sync runs to show.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout, for scripts.")
def status(run_count: int, as_json: bool) -> None:
    """Counts, recent events, sync runs and what they healed, unapplied events, webhook lag."""
    import json

    from rich.console import Console

    from healthdock_mirror.status import gather_status, render_tables, status_document

    settings = _settings()
    _configure_logging(settings)
    _existing_mirror(settings)
    with _database(settings) as engine:
        _current_schema(engine)  # a read command never writes, not even a migration
        facts = gather_status(engine, runs=run_count)
    if as_json:
        click.echo(json.dumps(status_document(facts), indent=2))
        return
    # Piped into a file or a script, rich would squeeze the tables into 80 columns.
    render_tables(facts, Console(width=None if sys.stdout.isatty() else 160))


@main.command()
@click.option("--port", type=int, help="Port for the receiver (default HEALTHDOCK_PORT, 8080).")
def demo(port: int | None) -> None:
    """Everything on the embedded SQLite default, against a local fake HealthDock."""
    import uvicorn

    from healthdock_mirror.demo import demo_services, demo_settings
    from receiver import create_app

    settings = demo_settings(_settings(port=port))
    _configure_logging(settings)
    _ensure_schema(settings)
    click.echo(
        f"receiver on http://{settings.host}:{settings.port}; "
        f"mirror at {settings.database_url_shown}\n"
        "the fake HealthDock changes 2 records a second and loses a fifth of its webhooks;\n"
        "the reconciler runs every 30 s. Query the mirror while it runs. Ctrl-C stops."
    )
    app = create_app(settings, services=demo_services(settings))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", log_config=None)


# What each outcome means, for the summary (same order as printed).
_REPLAY_OUTCOMES = {
    Effect.CREATED: "record created",
    Effect.UPDATED: "record updated",
    Effect.DELETED: "record tombstoned",
    Effect.RESTORED: "tombstoned record restored",
    Effect.STALE: "no change: the mirror already has this or a newer version",
    EventStatus.IGNORED: "event type not supported (kept for a later replay)",
    EventStatus.FAILED: "could not be applied (see its error)",
    REPLAY_SKIPPED: "payload removed by retention: cannot replay",
}


@main.command()
@click.option(
    "--since", callback=_instant, help="Events received at or after (ISO 8601; UTC if no zone)."
)
@click.option(
    "--until", callback=_instant, help="Events received before (ISO 8601; UTC if no zone)."
)
@click.option(
    "--type", "event_types", multiple=True, help="Event type, e.g. patient.updated (repeatable)."
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([status.value for status in EventStatus]),
    help="Stored status (repeatable), e.g. failed.",
)
@click.option(
    "--source",
    type=click.Choice([source.value for source in REPLAYABLE_SOURCES]),
    help="Where events came from.",
)
@click.option(
    "--seq",
    "seqs",
    multiple=True,
    type=click.IntRange(min=1),
    help="An event's seq in webhook_events (repeatable).",
)
@click.option("--event-id", "event_ids", multiple=True, help="An event's body id (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Every stored event (no selector).")
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option("--quiet", "-q", is_flag=True, help="List only failed and skipped events.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=200,
    show_default=True,
    help="Events per transaction.",
)
def replay(
    since: datetime | None, until: datetime | None, event_types: tuple[str, ...],
    statuses: tuple[str, ...], source: str | None, seqs: tuple[int, ...],
    event_ids: tuple[str, ...], everything: bool, dry_run: bool, quiet: bool, batch_size: int,
) -> None:  # fmt: skip
    """Re-apply stored events to the mirror, through the ordering guard.

    Select events by time received, type, status, source or id (selectors combine with AND;
    --seq and --event-id with OR). Old events never roll the mirror back: they come out
    "stale". Each event's outcome is recorded on its row. Exit 1 if any event failed.
    """
    from rich.console import Console
    from rich.table import Table

    from mirror import ReplayedEvent, Selection, SelectionError
    from mirror import replay as replay_events

    settings = _settings()
    _configure_logging(settings)
    _existing_mirror(settings)
    selection = Selection(
        since=since, until=until, event_types=event_types, statuses=statuses, source=source,
        seqs=seqs, event_ids=event_ids, everything=everything,
    )  # fmt: skip
    try:
        selection.validate()
    except SelectionError as error:
        raise click.UsageError(str(error)) from None

    def show(event: ReplayedEvent) -> None:
        if quiet and event.outcome not in (EventStatus.FAILED, REPLAY_SKIPPED):
            return
        record = f"{event.resource}/{event.record_id}" if event.record_id else "-"
        line = f"seq {event.seq}  {event.event_type}  {record}  {event.previous_status} -> "
        line += event.outcome
        if event.fields:
            line += f"  fields: {', '.join(event.fields)}"
        if event.error:
            line += f"  error: {event.error}"
        if event.previous_error and event.previous_error != event.error:
            line += f"  (was: {event.previous_error})"
        click.echo(line)

    if dry_run:
        click.echo("dry run: what a replay would do; nothing is written")
    with _database(settings) as engine:
        if not dry_run:
            # On the trail before anything is replayed, like the console's replay.
            record_cli_action(engine, AuditAction.REPLAY, describe_selection(selection))
        summary = replay_events(
            engine, selection, dry_run=dry_run, batch_size=batch_size, on_event=show
        )
    if not summary.events:
        click.echo("no stored event matches the selection")
        return
    table = Table(title="replay (dry run: nothing was written)" if dry_run else "replay")
    table.add_column("outcome")
    table.add_column("events", justify="right")
    table.add_column("meaning")
    for outcome, meaning in _REPLAY_OUTCOMES.items():
        if summary.counts[outcome]:
            table.add_row(outcome, str(summary.counts[outcome]), meaning)
    table.add_row("total", str(summary.events), "")
    Console(width=None if sys.stdout.isatty() else 140).print(table)
    if summary.failed:
        raise SystemExit(1)


@main.command()
def prune() -> None:
    """Apply retention now: payloads of applied events older than
    HEALTHDOCK_EVENT_RETENTION_DAYS, audit rows older than HEALTHDOCK_AUDIT_RETENTION_DAYS."""
    from mirror import audit as audit_trail
    from mirror import prune_event_payloads

    settings = _settings()
    _configure_logging(settings)
    event_days, audit_days = settings.event_retention_days, settings.audit_retention_days
    if event_days is None and audit_days is None:
        raise click.ClickException(
            "neither HEALTHDOCK_EVENT_RETENTION_DAYS nor HEALTHDOCK_AUDIT_RETENTION_DAYS is set: "
            "event payloads and the audit trail are kept forever"
        )
    _existing_mirror(settings)
    with _database(settings) as engine:
        if event_days is not None:
            removed = prune_event_payloads(engine, timedelta(days=event_days))
            click.echo(
                f"removed the payloads of {removed} applied events older than {event_days} days"
            )
        if audit_days is not None:
            rows = audit_trail.prune_audit(engine, timedelta(days=audit_days))
            click.echo(f"removed {rows} audit rows older than {audit_days} days")


main.add_command(token)
main.add_command(audit)
main.add_command(oauth_group)
main.add_command(export)
