"""Alembic environment: runs migrations on the connection or URL that the caller gives."""

from __future__ import annotations

from alembic import context

from config import load_settings
from mirror.database import create_mirror_engine
from mirror.schema import FOLDED_NAME_INDEXES, metadata

config = context.config


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.attributes.get("database_url")
    # The zone a migration computes local dates in is the engine's, as for the service.
    zone = config.attributes.get("local_timezone")
    if url is None:
        # `alembic upgrade head` on its own: the service's settings, read as the service does.
        settings = load_settings()
        url, zone = settings.database_url, settings.local_timezone
    engine = create_mirror_engine(url, local_timezone=zone)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


def _compared(item: object, name: str | None, type_: str, reflected: bool, _: object) -> bool:
    """What autogenerate compares with the schema module: all but the migration-only indexes."""
    return not (type_ == "index" and name in FOLDED_NAME_INDEXES)


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=metadata,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=True,
        compare_type=True,
        include_object=_compared,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations()
