"""Searches over ``patients`` and ``appointments`` for readers outside the service (FHIR):
criteria in, rows out, in id order, a page at a time.

A search is a list of criteria that must all hold; a criterion holds when any of its
alternatives does (FHIR's ``&`` and ``,``). Pages are keyset pages on the primary key: the
next page starts after the last id returned, so a record that matches throughout is returned
exactly once however the mirror changes between pages. Text prefixes compare case-folded
values (every cased letter on PostgreSQL, ASCII letters on SQLite, as each one's ``lower()``)
in code-point order, which is what the ``lower(...)`` indexes of the migration
``c4f1d2e8a9b3`` serve on both databases; exact text compares the column as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, func, not_, or_, select, true
from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import ColumnElement

from mirror.database import as_utc
from mirror.events import Resource
from mirror.schema import MIRRORED_TABLES

__all__ = [
    "Alternative",
    "Between",
    "Criterion",
    "Equals",
    "FoundRecord",
    "IdShape",
    "TextMatch",
    "count_records",
    "find_record",
    "iter_records",
    "search_records",
]

# The columns a search may name, and what they hold (one table each).
_SEARCHABLE = {
    Resource.PATIENT: {"id", "first_name", "last_name", "date_of_birth", "gender", "abha_number",
                       "updated_at", "mirrored_at"},
    Resource.APPOINTMENT: {"id", "patient_id", "doctor_id", "status", "date_time", "local_date",
                           "updated_at", "mirrored_at"},
}  # fmt: skip
_TEXT = {"first_name", "last_name"}
_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Equals:
    """The column holds one of ``values``."""

    column: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TextMatch:
    """One of ``columns`` starts with ``text``, ignoring case; or, ``exact``, equals it."""

    columns: tuple[str, ...]
    text: str
    exact: bool = False


@dataclass(frozen=True, slots=True)
class Between:
    """The column is set and ``low <= column < high`` (an open end when None); ``outside``: set
    and not in that range (FHIR's ``ne``). With neither end: the column is set."""

    column: str
    low: date | datetime | None
    high: date | datetime | None
    outside: bool = False


@dataclass(frozen=True, slots=True)
class IdShape:
    """The id is at most ``max_length`` long and made of ``characters`` only (a regular
    expression's bracket contents: letters, digits and ``.-``, say)."""

    characters: str
    max_length: int


Alternative = Equals | TextMatch | Between | IdShape
Criterion = tuple[Alternative, ...]


@dataclass(frozen=True, slots=True)
class FoundRecord:
    """A row as the mirror holds it: typed columns (timestamps aware, in UTC) and the tombstone."""

    id: str
    columns: dict[str, Any]
    deleted_at: datetime | None


def _folded(table: Table, column: str, postgres: bool) -> ColumnElement[str]:
    folded = func.lower(table.c[column])
    # Code-point order on PostgreSQL too (the index's collation), so a prefix is one range.
    return folded.collate("C") if postgres else folded


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _fold(text: str, postgres: bool) -> str:
    """``text`` as the database's lower() folds it: PostgreSQL folds every cased letter,
    SQLite's only the ASCII ones (so must the search's text be, to compare equal)."""
    return text.lower() if postgres else text.translate(_ASCII_LOWER)


def _after_prefix(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix``."""
    while prefix and prefix[-1] == "\U0010ffff":
        prefix = prefix[:-1]
    if not prefix:
        return None
    following = ord(prefix[-1]) + 1
    # Surrogates are no characters (no driver can send one): the next character follows them.
    return prefix[:-1] + chr(0xE000 if 0xD800 <= following <= 0xDFFF else following)


def _condition(table: Table, alternative: Alternative, postgres: bool) -> ColumnElement[bool]:
    if isinstance(alternative, IdShape):
        short = func.length(table.c.id) <= alternative.max_length
        if postgres:
            return and_(short, table.c.id.regexp_match(f"^[{alternative.characters}]+$"))
        # SQLite has no regular expressions by default; GLOB's classes are enough here.
        return and_(
            short, not_(table.c.id.op("GLOB", is_comparison=True)(f"*[^{alternative.characters}]*"))
        )
    if isinstance(alternative, Equals):
        return table.c[alternative.column].in_(alternative.values)
    if isinstance(alternative, TextMatch):
        if alternative.exact:
            return or_(*(table.c[column] == alternative.text for column in alternative.columns))
        matches = []
        text = _fold(alternative.text, postgres)
        for column in alternative.columns:
            folded = _folded(table, column, postgres)
            high = _after_prefix(text)
            matches.append(folded >= text if high is None else and_(folded >= text, folded < high))
        return or_(*matches)
    bounded = table.c[alternative.column]
    low = alternative.low
    a_day = isinstance(low, date) and not isinstance(low, datetime) and not alternative.outside
    if a_day and low is not None and alternative.high == low + _DAY:
        # A day, as equality: the planners then take (local_date, id) in id order, unsorted.
        return bounded == low
    bounds = []
    if alternative.low is not None:
        bounds.append(bounded >= _utc(alternative.low))
    if alternative.high is not None:
        bounds.append(bounded < _utc(alternative.high))
    inside = and_(true(), *bounds)
    return and_(bounded.is_not(None), not_(inside) if alternative.outside else inside)


def _utc(bound: date | datetime) -> date | datetime:
    # SQLite keeps timestamps as naive UTC text: a bound in another offset must be converted.
    return bound.astimezone(UTC) if isinstance(bound, datetime) else bound


def _checked(resource: Resource, criteria: Sequence[Criterion]) -> None:
    allowed = _SEARCHABLE[resource]
    for criterion in criteria:
        for alternative in criterion:
            if isinstance(alternative, IdShape):
                continue
            named = (
                alternative.columns if isinstance(alternative, TextMatch) else (alternative.column,)
            )
            unknown = set(named) - allowed
            if unknown or (isinstance(alternative, TextMatch) and set(named) - _TEXT):
                raise ValueError(f"{resource}: cannot search {sorted(named)}")


def _where(
    connection: Connection,
    resource: Resource,
    criteria: Sequence[Criterion],
    tombstoned: bool,
) -> tuple[Table, list[ColumnElement[bool]]]:
    _checked(resource, criteria)
    table = MIRRORED_TABLES[resource.value]
    postgres = connection.dialect.name == "postgresql"
    deleted = table.c.deleted_at
    conditions: list[ColumnElement[bool]] = [
        deleted.is_not(None) if tombstoned else deleted.is_(None)
    ]
    for criterion in criteria:
        conditions.append(or_(*(_condition(table, item, postgres) for item in criterion)))
    return table, conditions


def _found(table: Table, row: Any) -> FoundRecord:
    values = dict(row._mapping)
    for name, value in values.items():
        if isinstance(value, datetime):
            values[name] = as_utc(value)
    return FoundRecord(str(values["id"]), values, values["deleted_at"])


def search_records(
    connection: Connection,
    resource: Resource,
    criteria: Sequence[Criterion],
    *,
    after: str | None,
    limit: int,
    tombstoned: bool = False,
) -> list[FoundRecord]:
    """Up to ``limit`` live records (``tombstoned``: deleted ones) matching every criterion, by
    id, after the id ``after``."""
    table, conditions = _where(connection, resource, criteria, tombstoned)
    if after is not None:
        conditions.append(table.c.id > after)
    query = select(table).where(*conditions).order_by(table.c.id).limit(limit)
    return [_found(table, row) for row in connection.execute(query)]


def count_records(
    connection: Connection,
    resource: Resource,
    criteria: Sequence[Criterion],
    tombstoned: bool = False,
) -> int:
    """How many live records (``tombstoned``: deleted ones) match every criterion."""
    table, conditions = _where(connection, resource, criteria, tombstoned)
    query = select(func.count()).select_from(table).where(*conditions)
    return int(connection.execute(query).scalar_one())


def find_record(connection: Connection, resource: Resource, record_id: str) -> FoundRecord | None:
    """The record with this id, tombstoned or not; None if the mirror never had it."""
    table = MIRRORED_TABLES[resource.value]
    row = connection.execute(select(table).where(table.c.id == record_id)).first()
    return None if row is None else _found(table, row)


def iter_records(
    connection: Connection,
    resource: Resource,
    criteria: Sequence[Criterion],
    *,
    batch: int = 1000,
    tombstoned: bool = False,
) -> Iterator[FoundRecord]:
    """Every live record (``tombstoned``: deleted one) matching the criteria, by id, read
    ``batch`` rows at a time (memory stays flat however many there are)."""
    after: str | None = None
    while True:
        page = search_records(connection, resource, criteria, after=after, limit=batch,
                              tombstoned=tombstoned)  # fmt: skip
        yield from page
        if len(page) < batch:
            return
        after = page[-1].id
