"""The only writer of ``patients``, ``appointments`` and ``listed_records`` (which pass listed
each record), and the reads of them the service makes.

Receiver, sync and replay all change mirrored records through :func:`apply_writes`, so the
ordering guard (``mirror.guard``) is enforced in exactly one place.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, and_, case, func, literal, null, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import ColumnElement, ScalarSelect

from mirror.database import as_utc, local_timezone
from mirror.driver import BulkStatement, Driver, json_rows
from mirror.events import RecordWrite, Resource
from mirror.guard import RecordState, merge
from mirror.schema import MIRRORED_TABLES, appointments, listed_records
from mirror.states import Effect
from mirror.versions import Action, VersionKey, parse_moment


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
    return parse_moment(value) if isinstance(value, str) else None


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        # JSON has one number type: 3.0e1 and 30.0 denote the integer 30, as 30 does.
        value = int(value)
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


# Columns of ours computed from the typed ones (with their PostgreSQL types): written together
# with them, so that every writer (receiver, sync, replay) keeps them right.
_DERIVED: Mapping[Resource, Sequence[tuple[str, str]]] = {
    Resource.PATIENT: [],
    Resource.APPOINTMENT: [("local_date", "date")],
}


def typed_columns(
    resource: Resource, fields: Mapping[str, Any] | None, zone: ZoneInfo
) -> dict[str, object]:
    """A record's typed columns, and those derived from them: an appointment's local_date is
    its date_time's day in ``zone``."""
    columns = {
        name: convert((fields or {}).get(name)) for name, convert in _TYPED[resource].items()
    }
    if resource is Resource.APPOINTMENT:
        if fields is not None and "duration" not in fields:
            columns["duration"] = _DEFAULT_DURATION_MINUTES
        columns["local_date"] = local_date(columns["date_time"], zone)  # type: ignore[arg-type]
    return columns


def local_date(moment: datetime | None, zone: ZoneInfo) -> date | None:
    """The day an (aware) instant falls on in ``zone``."""
    if moment is None:
        return None
    try:
        return moment.astimezone(zone).date()
    except OverflowError:
        return None  # before year 1 or after 9999 there: no date column holds that day


def _deleted_at(state: RecordState) -> datetime | None:
    if state.deleted and state.deleted_version is not None:
        return _datetime(VersionKey(state.deleted_version).instant)
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
        self.table = table = MIRRORED_TABLES[resource.value].name
        typed = [
            (name, _POSTGRES_TYPES.get(convert, "text"))
            for name, convert in _TYPED[resource].items()
        ]
        typed += _DERIVED[resource]
        self.dates = {name for name, kind in typed if kind == "date"}
        self.timestamps = {name for name, kind in typed if kind == "timestamptz"}
        content = [*typed, ("raw", "json"), ("content_version", "text")]
        select = f"SELECT id, content_version, deleted_version FROM {table} WHERE "
        by_id = {name: Driver(name).id_list("id", "ids") for name in ("sqlite", "postgresql")}
        self.read = {
            "sqlite": select + by_id["sqlite"],
            "postgresql": select + by_id["postgresql"],
            # FOR UPDATE serializes concurrent writers of a record on PostgreSQL; SQLite has
            # one writer at a time already (BEGIN IMMEDIATE).
            "postgresql, locked": select + by_id["postgresql"] + " ORDER BY id FOR UPDATE",
        }
        # Records the mirror has never seen are inserted whole. On SQLite nobody can insert
        # between our read and this insert (one writer); on PostgreSQL somebody can, and the
        # rows that come back missing from RETURNING go through the update path instead.
        inserted = [("id", "text"), *content, *_BOOKKEEPING]
        names = ", ".join(name for name, _ in inserted)
        self.insert = BulkStatement(
            inserted,
            sqlite=f"INSERT INTO {table} ({names}) "
            f"VALUES ({', '.join(f':{name}' for name, _ in inserted)})",
            postgres=f"INSERT INTO {table} ({names}) SELECT {names} FROM {json_rows(inserted)} "
            "ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        # Only the delete changed: the row's last known content stays as it is.
        self.delete_only = _update(table, _BOOKKEEPING)
        self.content = _update(table, [*content, *_BOOKKEEPING])
        # The records a pass listed, changed or not: one statement marks a batch's worth of
        # them, in listed_records alone (the records' rows stay as they are).
        listed = (
            f"INSERT INTO listed_records (resource, record_id, run_id) SELECT '{resource.value}', "
            "value, CAST(:run AS BIGINT) FROM {ids} ON CONFLICT (resource, record_id) "
            "DO UPDATE SET run_id = excluded.run_id"
        )
        self.mark_listed = {
            # WHERE true: SQLite reads ON CONFLICT after a SELECT's FROM as a join's ON without it.
            "sqlite": listed.format(ids="json_each(:ids) WHERE true"),
            "postgresql": listed.format(ids="json_array_elements_text(:ids::json) AS value"),
        }


def _update(table: str, columns: Sequence[tuple[str, str]]) -> BulkStatement:
    names = [name for name, _ in columns]
    return BulkStatement(
        [("id", "text"), *columns],
        sqlite=f"UPDATE {table} SET {', '.join(f'{n} = :{n}' for n in names)} WHERE id = :id",
        postgres=(
            f"UPDATE {table} SET {', '.join(f'{n} = v.{n}' for n in names)} "
            f"FROM {json_rows([('id', 'text'), *columns])} WHERE {table}.id = v.id"
        ),
    )


_STATEMENTS = {resource: _Statements(resource) for resource in Resource}


def apply_writes(
    connection: Connection, writes: Sequence[RecordWrite], *, seen_in_run: int | None = None
) -> list[Effect]:
    """Apply writes in order inside the caller's transaction; return each write's effect.

    Effects are the ordering guard's (``created``, ``updated``, ``deleted``, ``restored``,
    ``stale``), one per write, in the order given. With ``seen_in_run``, every record written
    to, changed or not, is marked as listed by that reconcile pass.
    """
    # Every position is filled below: each write is merged once, in order.
    effects: list[Effect] = [Effect.STALE for _ in writes]
    driver = Driver.of(connection)
    # The zone of local dates is the engine's setting: no query, however many batches.
    stamp = _Stamp(driver.timestamp(datetime.now(UTC)), seen_in_run, local_timezone(connection))
    for resource in Resource:
        positions = [i for i, write in enumerate(writes) if write.resource is resource]
        if not positions:
            continue
        sql = _STATEMENTS[resource]
        # Sorted ids give every transaction the same lock order, so writers cannot deadlock.
        ids = sorted({writes[i].record_id for i in positions})
        present = _states(connection, driver, sql, ids, lock=False)
        positions = _without_outdated(writes, positions, present)
        inserted = _insert_absent(connection, driver, sql, writes, positions, present, effects,
                                  stamp)  # fmt: skip
        known = [i for i in positions if writes[i].record_id not in inserted]
        before = present
        if driver.postgres and known:
            if _unchanged(writes, known, present, effects):
                # The guard only raises versions, and no writer removes a row, so a write that
                # changes nothing in the state read without a lock changes nothing in any later
                # state either: those records need no second read and no lock.
                known = []
            else:
                # Locks are taken after the inserts, in id order, as every writer does.
                before = _states(connection, driver, sql, [i for i in ids if i not in inserted])
        if known:
            after = _merge(writes, known, before, effects)
            _write_changes(connection, driver, sql, before, after, stamp)
        if stamp.seen_in_run is not None:
            marking = {"run": stamp.seen_in_run, "ids": driver.ids(ids)}
            listing = sql.mark_listed["postgresql" if driver.postgres else "sqlite"]
            driver.execute(connection, listing, marking)
    return effects


@dataclass(frozen=True, slots=True)
class _Stamp:
    """What every row one call of apply_writes writes shares."""

    mirrored_at: object  # in the driver's form
    seen_in_run: int | None
    zone: ZoneInfo  # of local dates


def _states(
    connection: Connection, driver: Driver, sql: _Statements, ids: Sequence[str], lock: bool = True
) -> dict[str, RecordState]:
    if not ids:
        return {}
    if not driver.postgres:
        query = sql.read["sqlite"]
    else:
        query = sql.read["postgresql, locked" if lock else "postgresql"]
    rows = driver.execute(connection, query, {"ids": driver.ids(ids)})
    return {row[0]: RecordState(row[1], row[2]) for row in rows}


def _without_outdated(
    writes: Sequence[RecordWrite], positions: Sequence[int], present: Mapping[str, RecordState]
) -> list[int]:
    """``positions`` less the creates and updates no newer than their record's stored content.

    The guard refuses those whatever else the batch holds (a record's content version only
    grows), and their effect is already ``stale``: a pass that finds nothing new (most records
    of most passes) spends nothing more on them.
    """
    kept = []
    for i in positions:
        write = writes[i]
        state = present.get(write.record_id)
        if (
            state is None
            or state.content_version is None
            or write.action is Action.DELETE
            or write.version > state.content_version
        ):
            kept.append(i)
    return kept


def _insert_absent(
    connection: Connection,
    driver: Driver,
    sql: _Statements,
    writes: Sequence[RecordWrite],
    positions: Sequence[int],
    present: Mapping[str, RecordState],
    effects: list[Effect],
    stamp: _Stamp,
) -> set[str]:
    """Insert whole rows for the records the mirror has never seen; return their ids.

    On PostgreSQL another writer may insert one of them first: it is left out of the result
    and goes through the update path, under its row lock, like any known record.
    """
    absent = [i for i in positions if writes[i].record_id not in present]
    if not absent:
        return set()
    new = _merge(writes, absent, {}, effects)
    rows = [
        _row(driver, sql, record_id, RecordState(), new[record_id], stamp)
        for record_id in sorted(new)
    ]
    result = sql.insert.execute(connection, rows)
    if driver.postgres:
        return {row[0] for row in result}
    return set(new)


def _unchanged(
    writes: Sequence[RecordWrite],
    positions: Sequence[int],
    before: Mapping[str, RecordState],
    effects: list[Effect],
) -> bool:
    """Whether the writes at ``positions``, merged in order from ``before``, leave every record
    as it was (each one's effect is then in ``effects``)."""
    after = _merge(writes, positions, before, effects)
    return all(before.get(record_id) == state for record_id, state in after.items())


def _merge(
    writes: Sequence[RecordWrite],
    positions: Sequence[int],
    before: Mapping[str, RecordState],
    effects: list[Effect],
) -> dict[str, RecordState]:
    """Each record's state after its writes (in order), from ``before`` or from nothing."""
    states: dict[str, RecordState] = {}
    for i in positions:
        write = writes[i]
        state = states.get(write.record_id) or before.get(write.record_id) or RecordState()
        states[write.record_id], effects[i] = merge(
            state, write.action, write.version, write.fields
        )
    return states


def _write_changes(
    connection: Connection,
    driver: Driver,
    sql: _Statements,
    before: Mapping[str, RecordState],
    after: Mapping[str, RecordState],
    stamp: _Stamp,
) -> None:
    """Write the rows that change from ``before`` to ``after``."""
    content_rows: list[dict[str, object]] = []
    delete_rows: list[dict[str, object]] = []
    for record_id, state in after.items():
        old = before[record_id]
        if state == old:
            continue
        row = _row(driver, sql, record_id, old, state, stamp)
        (content_rows if "content_version" in row else delete_rows).append(row)
    if content_rows:
        sql.content.execute(connection, content_rows)
    if delete_rows:
        sql.delete_only.execute(connection, delete_rows)


def _row(
    driver: Driver,
    sql: _Statements,
    record_id: str,
    old: RecordState,
    state: RecordState,
    stamp: _Stamp,
) -> dict[str, object]:
    """The columns that change from ``old`` to ``state``: the content ones only if it changed."""
    version = state.version
    row: dict[str, object] = {
        "id": record_id,
        "deleted_version": state.deleted_version,
        "deleted_at": driver.timestamp(_deleted_at(state)),
        "source_version": VersionKey(version).instant if version else None,
        "mirrored_at": stamp.mirrored_at,
    }
    if state.content_version == old.content_version and old.exists:
        return row
    typed = typed_columns(sql.resource, state.fields, stamp.zone)
    for name in sql.dates:
        typed[name] = driver.date(typed[name])  # type: ignore[arg-type]
    for name in sql.timestamps:
        typed[name] = driver.timestamp(typed[name])  # type: ignore[arg-type]
    row.update(typed, raw=driver.json(state.fields), content_version=state.content_version)
    return row


# --- local dates in another zone: `healthdock-mirror local-dates` (mirror.local_dates) --------

# On PostgreSQL a writer may change date_time between the read and this update: its row is then
# left as that writer wrote it (the condition on date_time). SQLite has one writer at a time.
_LOCAL_DATE_ROWS = [("id", "text"), ("date_time", "timestamptz"), ("local_date", "date"),
                    ("mirrored_at", "timestamptz")]  # fmt: skip
_SET_LOCAL_DATE = BulkStatement(
    _LOCAL_DATE_ROWS,
    sqlite="UPDATE appointments SET local_date = :local_date, mirrored_at = :mirrored_at "
    "WHERE id = :id",
    postgres="UPDATE appointments SET local_date = v.local_date, mirrored_at = v.mirrored_at "
    f"FROM {json_rows(_LOCAL_DATE_ROWS)} "
    "WHERE appointments.id = v.id AND appointments.date_time IS NOT DISTINCT FROM v.date_time",
)


@dataclass(frozen=True, slots=True)
class LocalDateBatch:
    last_id: str | None  # the batch's greatest id; None when no appointment was left
    read: int
    changed: int


def refresh_local_dates(
    connection: Connection, zone: ZoneInfo, after: str | None, limit: int
) -> LocalDateBatch:
    """Set local_date in ``zone`` on the next ``limit`` appointments by id after ``after``
    (None: from the first; keyset, so memory stays flat however many there are). Rows already
    right are not written."""
    query = select(appointments.c.id, appointments.c.date_time, appointments.c.local_date)
    if after is not None:
        query = query.where(appointments.c.id > after)
    rows = connection.execute(query.order_by(appointments.c.id).limit(limit)).all()
    if not rows:
        return LocalDateBatch(None, 0, 0)
    driver = Driver.of(connection)
    stamp = driver.timestamp(datetime.now(UTC))
    changes = []
    for record_id, stored_moment, stored_date in rows:
        moment = None if stored_moment is None else as_utc(stored_moment)
        wanted = local_date(moment, zone)
        if wanted != stored_date:
            changes.append({
                "id": record_id,
                "date_time": driver.timestamp(moment),
                "local_date": driver.date(wanted),
                "mirrored_at": stamp,
            })  # fmt: skip
    changed = 0
    if changes:
        cursor: Any = _SET_LOCAL_DATE.execute(connection, changes)
        changed = int(cursor.rowcount)
    return LocalDateBatch(str(rows[-1][0]), len(rows), changed)


# --- reads: counts, and the records a reconcile pass did not list ---------------------------


@dataclass(frozen=True, slots=True)
class RecordCounts:
    live: int
    deleted: int  # tombstoned: kept, with deleted_at set


def record_counts(connection: Connection, resource: Resource) -> RecordCounts:
    table = MIRRORED_TABLES[resource.value]
    total, deleted = connection.execute(select(func.count(), func.count(table.c.deleted_at))).one()
    return RecordCounts(live=int(total) - int(deleted), deleted=int(deleted))


def _last_listed(resource: Resource) -> ScalarSelect[Any]:
    """The pass that last listed each row of ``resource``'s table (NULL: none did).

    A lookup by the key for each row, not a join: right after a first pass, before PostgreSQL
    has analyzed the tables, its planner took both for a dozen rows and joined them by a nested
    loop over every pair (20 s for 20,000 patients, and quadratic).
    """
    table = MIRRORED_TABLES[resource.value]
    return (
        select(listed_records.c.run_id)
        .where(
            listed_records.c.resource == resource.value, listed_records.c.record_id == table.c.id
        )
        .scalar_subquery()
    )


def _unlisted(resource: Resource, run_id: int, run_started_at: datetime) -> Select[Any]:
    """Live records the pass did not list and that nobody wrote since it began."""
    table = MIRRORED_TABLES[resource.value]
    # Run ids start at 1: 0 stands for "never listed", and the lookup runs once a row.
    listed_by = func.coalesce(_last_listed(resource), 0)
    return select(table.c.id).where(
        table.c.deleted_at.is_(None),
        listed_by != run_id,
        table.c.mirrored_at < run_started_at,
    )


def count_unlisted(
    connection: Connection, resource: Resource, run_id: int, run_started_at: datetime
) -> tuple[int, int]:
    """(live records the pass did not list nor anyone wrote since it began, live records)."""
    table = MIRRORED_TABLES[resource.value]
    unlisted = connection.execute(
        select(func.count()).select_from(_unlisted(resource, run_id, run_started_at).subquery())
    ).scalar_one()
    live = connection.execute(
        select(func.count()).select_from(table).where(table.c.deleted_at.is_(None))
    ).scalar_one()
    return int(unlisted), int(live)


@dataclass(frozen=True, slots=True)
class Unlisted:
    """A live record a pass did not list: a candidate for deletion, to confirm first."""

    id: str
    date_time: datetime | None  # an appointment's, as the mirror has it
    missed_before: bool  # the previous complete pass did not list it either


def unlisted_records(
    connection: Connection,
    resource: Resource,
    run_id: int,
    run_started_at: datetime,
    previous: tuple[int, datetime] | None,
    after: str,
    limit: int,
) -> list[Unlisted]:
    """The next ``limit`` unlisted records by id after ``after`` (memory stays flat however
    many there are). ``previous`` is the id and start of the previous complete pass."""
    table = MIRRORED_TABLES[resource.value]
    if previous is None:
        missed: ColumnElement[bool] = literal(False)
    else:
        previous_id, previous_started_at = previous
        # Listed by an earlier pass but not the previous one; or never listed, and in the
        # mirror unchanged since before the previous pass began (so it was there to list).
        last_listed = _last_listed(resource)
        missed = or_(
            last_listed < previous_id,
            and_(last_listed.is_(None), table.c.mirrored_at < previous_started_at),
        )
    when = table.c.date_time if resource is Resource.APPOINTMENT else null()
    query = (
        _unlisted(resource, run_id, run_started_at)
        .add_columns(when, case((missed, True), else_=False))
        .where(table.c.id > after)
        .order_by(table.c.id)
        .limit(limit)
    )
    return [
        Unlisted(str(row[0]), None if row[1] is None else as_utc(row[1]), bool(row[2]))
        for row in connection.execute(query)
    ]


@dataclass(frozen=True, slots=True)
class RecordRow:
    """One mirrored record as the table holds it (patient data: its caller audits)."""

    columns: list[tuple[str, object]]
    deleted_at: datetime | None


def record_row(connection: Connection, resource: Resource, record_id: str) -> RecordRow | None:
    table = MIRRORED_TABLES[resource.value]
    row = connection.execute(select(table).where(table.c.id == record_id)).first()
    if row is None:
        return None
    shown = []
    for name, value in row._mapping.items():
        if name in ("content_version", "deleted_version"):
            continue  # the guard's bookkeeping: in source_version, readably
        if name == "raw" and value is not None:
            value = json.dumps(value, ensure_ascii=False, sort_keys=True)
        shown.append((str(name), value))
    deleted_at = row._mapping["deleted_at"]
    return RecordRow(shown, None if deleted_at is None else as_utc(deleted_at))
