"""Bring a mirror database's schema to the current Alembic revision, or say how far it is."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import migrations
from config import MirrorError
from mirror.database import is_sqlite, local_timezone, unavailable_as_error

_SCRIPT_LOCATION = str(Path(migrations.__file__).parent)


def alembic_config(engine: Engine | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", _SCRIPT_LOCATION)
    if engine is not None:
        config.attributes["database_url"] = engine.url.render_as_string(hide_password=False)
        config.attributes["local_timezone"] = local_timezone(engine)
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "migrations/ has no revision"
    return head


def current_revision(engine: Engine) -> str | None:
    with unavailable_as_error(), engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


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
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    with unavailable_as_error(), engine.begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
