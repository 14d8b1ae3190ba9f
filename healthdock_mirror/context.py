"""What every command of the command line shares: its settings, logging, database, checks."""

from __future__ import annotations

import contextlib
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
    prepare_for_writing,
    require_current,
    sqlite_file,
)


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
        settings.database_url, timeout_seconds=settings.database_timeout_seconds
    )
    try:
        yield engine
    except DatabaseUnavailable as error:
        raise click.ClickException(
            f"HEALTHDOCK_DATABASE_URL: cannot reach the database ({error})"
        ) from None
    finally:
        engine.dispose()


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
