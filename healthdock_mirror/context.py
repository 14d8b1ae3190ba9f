"""What every command of the command line shares: its settings, logging, database, checks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import click
from sqlalchemy import Engine

from config import Settings, SettingsError, configure_logging, load_settings
from mirror import (
    DatabaseUnavailable,
    SchemaNotCurrent,
    create_mirror_engine,
    local_dates,
    prepare_for_writing,
    read_transaction,
    require_current,
    sqlite_file,
)

log = logging.getLogger(__name__)


def settings_or_exit(**overrides: Any) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


def configure_logs(settings: Settings) -> None:
    configure_logging(settings.log_options)


def ensure_schema(settings: Settings) -> None:
    """Before a command that writes the mirror: the core's rule (mirror.migrate)."""
    with database(settings) as engine:
        try:
            migrated = prepare_for_writing(engine)
        except SchemaNotCurrent as error:
            raise click.ClickException(str(error)) from None
    if migrated is not None:
        # A note, on standard error: standard output is each command's result (a token, a URL).
        click.echo(f"migrated the SQLite mirror to {migrated}", err=True)


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[Engine]:
    """An engine for one command; an unreachable database is reported by its setting."""
    engine = create_mirror_engine(
        settings.database_url,
        timeout_seconds=settings.database_timeout_seconds,
        local_timezone=settings.local_timezone,
    )
    try:
        yield engine
    except DatabaseUnavailable as error:
        raise click.ClickException(
            f"HEALTHDOCK_DATABASE_URL: cannot reach the database ({error})"
        ) from None
    finally:
        engine.dispose()


def warn_of_other_local_date_zone(settings: Settings) -> None:
    """At the start of a command that writes appointments (serve, worker, sync): one warning
    when the mirror's local dates were computed in another zone than HEALTHDOCK_TIMEZONE.
    New writes follow the setting; the rows already there do not until `local-dates` runs."""
    with database(settings) as engine:
        stored = read_transaction(engine, local_dates.local_date_zone)
    advice = local_dates.zone_advice(stored, settings.local_timezone.key)
    if advice is not None:
        log.warning("%s", advice)


def current_schema(engine: Engine) -> None:
    """A read command never migrates: a schema behind the code is refused, with what to do."""
    try:
        require_current(engine)
    except SchemaNotCurrent as error:
        raise click.ClickException(str(error)) from None


def existing_mirror(settings: Settings) -> None:
    """Commands that only read or fix a mirror refuse a SQLite file that does not exist:
    a mistyped path would otherwise create, migrate and report an empty mirror."""
    path = sqlite_file(settings.database_url)
    if path is not None and not path.exists():
        raise click.ClickException(
            f"HEALTHDOCK_DATABASE_URL: there is no SQLite mirror at {path} "
            "(check the path, or create it with `healthdock-mirror migrate`)"
        )


def instant(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO 8601 date or instant; without a zone it is UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not ISO 8601 (e.g. 2024-01-12T10:30:00Z)") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
