"""Bring a mirror database's schema to the current Alembic revision, or say how far it is."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

from sqlalchemy import Engine, inspect, text

import migrations
from config import MirrorError
from mirror.database import is_sqlite, local_timezone, unavailable_as_error

if TYPE_CHECKING:
    from alembic.config import Config

# The newest migration's revision. Every command checks the schema before it starts, and
# finding the head through Alembic means importing Alembic and running every migration script:
# 0.16 CPU-seconds of each command's start-up (issue 15). A new migration updates this line;
# tests/test_migrations.py holds it to Alembic's own head, so a forgotten update fails there.
HEAD_REVISION: Final = "a81d5c3e7f40"
# Alembic's bookkeeping table (its default name; migrations/env.py does not change it).
_VERSION_TABLE = "alembic_version"
_READ_VERSION = text("SELECT version_num FROM alembic_version")

_SCRIPT_LOCATION = str(Path(migrations.__file__).parent)


def alembic_config(engine: Engine | None = None) -> Config:
    # Alembic is imported only by what migrates (or inspects the migrations), not by a check.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", _SCRIPT_LOCATION)
    if engine is not None:
        config.attributes["database_url"] = engine.url.render_as_string(hide_password=False)
        config.attributes["local_timezone"] = local_timezone(engine)
    return config


def head_revision() -> str:
    return HEAD_REVISION


def current_revision(engine: Engine) -> str | None:
    """The revision the database's schema is at; None for a database never migrated."""
    with unavailable_as_error(), engine.connect() as connection:
        if not inspect(connection).has_table(_VERSION_TABLE):
            return None
        found = connection.execute(_READ_VERSION).scalars()
        # One row on a linear history. Several (branches merged by hand) are not our head.
        return ", ".join(sorted(found)) or None


def is_current(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()


class SchemaNotCurrent(MirrorError):
    """The database's schema is not at the migrations' head."""

    def __init__(self) -> None:
        super().__init__(
            "the database schema is not current: run `healthdock-mirror migrate` first"
        )


def require_current(engine: Engine) -> None:
    """For whatever only reads the mirror: a schema behind the code is refused, never changed."""
    if not is_current(engine):
        raise SchemaNotCurrent


def prepare_for_writing(engine: Engine) -> str | None:
    """Before a process that writes the mirror starts: the embedded SQLite default is migrated
    on first use (a hospital trying the service has nothing else to run); any other database
    is migrated only by ``healthdock-mirror migrate``, when its operator says so. Returns the
    revision migrated to, or None when the schema was current."""
    if is_current(engine):
        return None
    if not is_sqlite(engine):
        raise SchemaNotCurrent
    upgrade(engine)
    return head_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    with unavailable_as_error(), engine.begin() as connection:
        from alembic import command

        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    with unavailable_as_error(), engine.begin() as connection:
        from alembic import command

        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
