"""``healthdock-mirror export fhir DIR``: the mirror as FHIR bulk-data files (fhir_r4.export)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from healthdock_mirror.access_commands import record_cli_action
from healthdock_mirror.context import (
    configure_logs,
    current_schema,
    database,
    existing_mirror,
    settings_or_exit,
)
from healthdock_mirror.context import instant as parse_instant_option
from mirror import AuditAction


@click.group()
def export() -> None:
    """Write the mirror out in a standard format."""


@export.command("fhir")
@click.argument("directory", type=click.Path(file_okay=False, writable=True, path_type=Path))
@click.option(
    "--since",
    callback=parse_instant_option,
    help="Only records the mirror changed after this ISO 8601 instant (UTC without a zone).",
)
def export_fhir_command(directory: Path, since: datetime | None) -> None:
    """Write Patient.ndjson and Appointment.ndjson (FHIR R4, one resource a line) into
    DIRECTORY: every live record, or those the mirror changed since --since; deleted.ndjson,
    the records deleted since then (bulk data's DELETE Bundles); and manifest.json, whose
    transactionTime is the next export's --since. Memory stays flat however large the mirror;
    the files replace an earlier export's together, once all are whole.

    The files hold patient data: the export is on the audit trail before it starts.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )

    from fhir_r4 import export_fhir

    settings = settings_or_exit()
    configure_logs(settings)
    existing_mirror(settings)
    scope = "every live record" if since is None else f"records changed since {since.isoformat()}"
    with database(settings) as engine, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=Console(stderr=True), transient=False,
    ) as bar:  # fmt: skip
        current_schema(engine)
        record_cli_action(engine, AuditAction.FHIR_EXPORT, f"{scope}, into {directory}"[:500])
        tasks: dict[str, TaskID] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=None)
            bar.update(tasks[name], completed=done, total=total)

        try:
            export = export_fhir(engine, directory, zone=settings.local_timezone, since=since,
                                 progress=progress)  # fmt: skip
        except OSError as error:
            raise click.ClickException(f"{directory}: {error.strerror or error}") from None
    for exported in export.files:
        click.echo(f"{exported.path}: {exported.resources} resources")
    # What the next incremental export passes, also in manifest.json.
    click.echo(f"next: --since {export.transaction_time.isoformat()}")
