"""``healthdock-mirror``: each command parses its arguments, builds settings, calls one function."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import click
from sqlalchemy import Engine

from config import Settings, SettingsError, load_settings
from mirror.database import DatabaseUnavailable, create_mirror_engine, is_sqlite
from mirror.migrate import current_revision, head_revision, upgrade


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic announces its dialect on every schema check (readyz); keep that out of the log.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)


@click.group()
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
def serve(host: str | None, port: int | None, access_log: bool) -> None:
    """Run the webhook receiver."""
    import uvicorn

    from receiver import create_app

    settings = _settings(host=host, port=port)
    _configure_logging(settings)
    _ensure_schema(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=access_log,
        # uvicorn would otherwise replace the logging set up above.
        log_config=None,
    )


def _ensure_schema(settings: Settings) -> None:
    """Migrate the embedded SQLite default on first start; ask for `migrate` elsewhere."""
    with _database(settings) as engine:
        if current_revision(engine) == head_revision():
            return
        if not is_sqlite(engine):
            raise click.ClickException(
                "the database schema is not current: run `healthdock-mirror migrate` first"
            )
        upgrade(engine)
        click.echo(f"migrated the SQLite mirror to {head_revision()}")


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[Engine]:
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
