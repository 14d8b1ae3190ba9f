"""The only writer of ``patients`` and ``appointments``.

Receiver, sync and replay all change mirrored records through :func:`apply_writes`, so the
ordering guard (``mirror.guard``) is enforced in exactly one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy.engine import Connection

from mirror.driver import BulkStatement, Driver, unnest
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
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def _datetime(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
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


def _deleted_at(state: RecordState) -> datetime | None:
    if state.deleted and state.deleted_version is not None:
        return _datetime(instant_of_key(state.deleted_version))
    return None


_POSTGRES_TYPES: Mapping[Callable[[object], object], str] = {
    _date: "date",
    _datetime: "timestamptz",
    _int: "integer",
}
_BOOKKEEPING = [
    ("deleted_version", "text"),
    ("deleted_at", "timestamptz"),
    ("source_version", "text"),
    ("mirrored_at", "timestamptz"),
]


class _Statements:
    """The SQL that writes one mirrored table (see ``mirror.driver``)."""

    def __init__(self, resource: Resource) -> None:
        self.resource = resource
        table = MIRRORED_TABLES[resource.value].name
        self.dates = {name for name, convert in _TYPED[resource].items() if convert is _date}
        self.timestamps = {n for n, convert in _TYPED[resource].items() if convert is _datetime}
        typed = [
            (name, _POSTGRES_TYPES.get(convert, "text"))
            for name, convert in _TYPED[resource].items()
        ]
        self.placeholders = BulkStatement(
            ["id", "mirrored_at"],
            sqlite=(
                f"INSERT INTO {table} (id, mirrored_at) VALUES (:id, :mirrored_at) "
                "ON CONFLICT (id) DO NOTHING"
            ),
            postgres=(
                f"INSERT INTO {table} (id, mirrored_at) SELECT id, mirrored_at "
                f"FROM {unnest([('id', 'text'), ('mirrored_at', 'timestamptz')])} "
                "ON CONFLICT (id) DO NOTHING"
            ),
        )
        self.lock = {
            False: (
                f"SELECT id, content_version, deleted_version FROM {table} "
                "WHERE id IN (SELECT value FROM json_each(:ids))"
            ),
            # FOR UPDATE serializes concurrent writers of a record on PostgreSQL; SQLite has
            # one writer at a time already (BEGIN IMMEDIATE).
            True: (
                f"SELECT id, content_version, deleted_version FROM {table} "
                "WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"
            ),
        }
        # Only the delete changed: the row's last known content stays as it is.
        self.delete_only = _update(table, _BOOKKEEPING)
        self.content = _update(
            table, [*typed, ("raw", "json"), ("content_version", "text"), *_BOOKKEEPING]
        )


def _update(table: str, columns: Sequence[tuple[str, str]]) -> BulkStatement:
    names = [name for name, _ in columns]
    return BulkStatement(
        ["id", *names],
        sqlite=f"UPDATE {table} SET {', '.join(f'{n} = :{n}' for n in names)} WHERE id = :id",
        postgres=(
            f"UPDATE {table} SET {', '.join(f'{n} = v.{n}' for n in names)} "
            f"FROM {unnest([('id', 'text'), *columns])} WHERE {table}.id = v.id"
        ),
    )


_STATEMENTS = {resource: _Statements(resource) for resource in Resource}


def apply_writes(connection: Connection, writes: Sequence[RecordWrite]) -> list[str]:
    """Apply writes in order inside the caller's transaction; return each write's effect.

    Effects are those of ``mirror.guard`` (``created``, ``updated``, ``deleted``, ``restored``,
    ``stale``), one per write, in the order given.
    """
    effects: list[str] = ["" for _ in writes]
    driver = Driver.of(connection)
    now = datetime.now(UTC)
    for resource in Resource:
        positions = [i for i, write in enumerate(writes) if write.resource is resource]
        if not positions:
            continue
        sql = _STATEMENTS[resource]
        # Sorted ids give every transaction the same lock order, so writers cannot deadlock.
        ids = sorted({writes[i].record_id for i in positions})
        # A row for every id first, so that all of them can be locked before they are read.
        stamp = driver.timestamp(now)
        sql.placeholders.execute(connection, [{"id": i, "mirrored_at": stamp} for i in ids])
        rows = driver.execute(connection, sql.lock[driver.postgres], {"ids": driver.ids(ids)})
        before = {row[0]: RecordState(row[1], row[2]) for row in rows}
        states = dict(before)
        for i in positions:
            write = writes[i]
            state = states[write.record_id]
            states[write.record_id], effects[i] = merge(
                state, write.action, write.version, write.fields
            )
        _write_changes(connection, driver, sql, before, states, stamp)
    return effects


def _write_changes(
    connection: Connection,
    driver: Driver,
    sql: _Statements,
    before: Mapping[str, RecordState],
    after: Mapping[str, RecordState],
    stamp: object,
) -> None:
    content_rows, delete_rows = [], []
    for record_id, state in after.items():
        old = before[record_id]
        if state == old:
            continue
        version = state.version
        row: dict[str, object] = {
            "id": record_id,
            "deleted_version": state.deleted_version,
            "deleted_at": driver.timestamp(_deleted_at(state)),
            "source_version": instant_of_key(version) if version else None,
            "mirrored_at": stamp,
        }
        if state.content_version == old.content_version:
            delete_rows.append(row)
            continue
        typed = typed_columns(sql.resource, state.fields)
        for name in sql.dates:
            typed[name] = driver.date(typed[name])  # type: ignore[arg-type]
        for name in sql.timestamps:
            typed[name] = driver.timestamp(typed[name])  # type: ignore[arg-type]
        row.update(typed, raw=driver.json(state.fields), content_version=state.content_version)
        content_rows.append(row)
    if content_rows:
        sql.content.execute(connection, content_rows)
    if delete_rows:
        sql.delete_only.execute(connection, delete_rows)
