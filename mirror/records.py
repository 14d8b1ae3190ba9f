"""The only writer of ``patients`` and ``appointments``.

Receiver, sync and replay all change mirrored records through :func:`apply_writes`, so the
ordering guard (``mirror.guard``) is enforced in exactly one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from mirror.events import RecordWrite, Resource
from mirror.guard import RecordState, merge
from mirror.schema import MIRRORED_TABLES
from mirror.versions import VersionError, instant_of_key, parse_instant


def _text(value: object, max_length: int | None = None) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value)
    # PostgreSQL refuses NUL in text and over-long values in bounded columns.
    if "\x00" in text or (max_length is not None and len(text) > max_length):
        return None
    return text


def _short_text(max_length: int) -> Callable[[object], str | None]:
    return lambda value: _text(value, max_length)


def _date(value: object) -> date | None:
    try:
        return date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _datetime(value: object) -> datetime | None:
    try:
        return parse_instant(value).to_datetime()
    except VersionError:
        return None


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(2**31) <= value < 2**31 else None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 10:
        return int(value)
    return None


_DEFAULT_DURATION_MINUTES = 30

# Typed columns are a convenience for SQL; a value that does not fit its type is left NULL
# there and kept verbatim in ``raw``, so nothing HealthDock sends is lost or refused.
_TYPED: Mapping[Resource, Mapping[str, Callable[[object], object]]] = {
    Resource.PATIENT: {
        "first_name": _text,
        "last_name": _text,
        "date_of_birth": _date,
        "gender": _short_text(16),
        "phone": _short_text(32),
        "abha_number": _short_text(32),
        "created_at": _datetime,
        "updated_at": _datetime,
    },
    Resource.APPOINTMENT: {
        "patient_id": _short_text(128),
        "doctor_id": _short_text(128),
        "date_time": _datetime,
        "duration": _int,
        "type": _short_text(32),
        "status": _short_text(32),
        "created_at": _datetime,
        "updated_at": _datetime,
    },
}


def typed_columns(resource: Resource, fields: Mapping[str, Any] | None) -> dict[str, object]:
    columns = {
        name: convert((fields or {}).get(name)) for name, convert in _TYPED[resource].items()
    }
    absent = fields is not None and "duration" not in fields
    if resource is Resource.APPOINTMENT and absent:
        columns["duration"] = _DEFAULT_DURATION_MINUTES
    return columns


def _row_values(resource: Resource, state: RecordState, now: datetime) -> dict[str, object]:
    deleted_at = None
    if state.deleted and state.deleted_version is not None:
        deleted_at = _datetime(instant_of_key(state.deleted_version))
    version = state.version
    return {
        **typed_columns(resource, state.fields),
        "raw": dict(state.fields) if state.fields is not None else None,
        "source_version": instant_of_key(version) if version else None,
        "deleted_at": deleted_at,
        "mirrored_at": now,
        "content_version": state.content_version,
        "deleted_version": state.deleted_version,
    }


def _insert_placeholders(connection: Connection, table: Table, ids: Sequence[str]) -> None:
    """Make sure a row exists for every id, so the rows can be locked before they are read."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).on_conflict_do_nothing(index_elements=["id"])
    now = datetime.now(UTC)
    connection.execute(statement, [{"id": record_id, "mirrored_at": now} for record_id in ids])


def _lock_states(
    connection: Connection, table: Table, ids: Sequence[str]
) -> dict[str, RecordState]:
    # FOR UPDATE serializes concurrent writers of one record on PostgreSQL; SQLite has one
    # writer at a time already (BEGIN IMMEDIATE) and ignores it.
    rows = connection.execute(
        select(table.c.id, table.c.content_version, table.c.deleted_version, table.c.raw)
        .where(table.c.id.in_(ids))
        .with_for_update()
    )
    return {row.id: RecordState(row.content_version, row.deleted_version, row.raw) for row in rows}


def apply_writes(connection: Connection, writes: Sequence[RecordWrite]) -> list[str]:
    """Apply writes in order inside the caller's transaction; return each write's effect.

    Effects are those of ``mirror.guard`` (``created``, ``updated``, ``deleted``, ``restored``,
    ``stale``), one per write, in the order given.
    """
    effects: list[str] = ["" for _ in writes]
    now = datetime.now(UTC)
    for resource in Resource:
        positions = [i for i, write in enumerate(writes) if write.resource is resource]
        if not positions:
            continue
        table = MIRRORED_TABLES[resource.value]
        # Sorted ids give every transaction the same lock order, so writers cannot deadlock.
        ids = sorted({writes[i].record_id for i in positions})
        _insert_placeholders(connection, table, ids)
        states = _lock_states(connection, table, ids)
        changed: set[str] = set()
        for i in positions:
            write = writes[i]
            state = states.get(write.record_id, RecordState())
            new_state, effects[i] = merge(state, write.action, write.version.key, write.fields)
            if new_state is not state:
                states[write.record_id] = new_state
                changed.add(write.record_id)
        if changed:
            _update_rows(connection, table, resource, {i: states[i] for i in changed}, now)
    return effects


def _update_rows(
    connection: Connection,
    table: Table,
    resource: Resource,
    states: Mapping[str, RecordState],
    now: datetime,
) -> None:
    rows = [
        {"record_id": record_id, **_row_values(resource, state, now)}
        for record_id, state in sorted(states.items())
    ]
    # Parameters named after columns become the SET clause of this executemany.
    statement = update(table).where(table.c.id == bindparam("record_id"))
    connection.execute(statement, rows)


def read_state(connection: Connection, resource: Resource, record_id: str) -> RecordState | None:
    """The guard's view of one record, or None when it was never mirrored."""
    table = MIRRORED_TABLES[resource.value]
    row = connection.execute(
        select(table.c.content_version, table.c.deleted_version, table.c.raw).where(
            table.c.id == record_id
        )
    ).first()
    return None if row is None else RecordState(row.content_version, row.deleted_version, row.raw)
