"""SQL for the hot path (webhook intake, reconcile upserts), run straight on the DB driver.

SQLAlchemy's per-row parameter processing cost more than the database itself on the intake
path, so these few statements are written once, with ``:name`` placeholders, and executed
with ``exec_driver_sql``. This module owns the two things that SQLAlchemy would otherwise do:
the driver's placeholder style, and values in the form SQLAlchemy's types read back (so
reads through ``mirror.schema`` see the same values either way).
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

import msgspec
from sqlalchemy.engine import Connection

_PLACEHOLDER = re.compile(r"(?<![:\w]):(\w+)")


class Driver:
    """Placeholders and value forms for one dialect (``sqlite`` or ``postgresql``)."""

    def __init__(self, dialect_name: str) -> None:
        self.postgres = dialect_name == "postgresql"

    @staticmethod
    def of(connection: Connection) -> Driver:
        return _DRIVERS[connection.dialect.name]

    def execute(
        self,
        connection: Connection,
        sql: str,
        params: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    ) -> Iterable[tuple[Any, ...]]:
        """Run ``sql`` on the driver's cursor, inside ``connection``'s transaction.

        A sequence of parameter sets runs as ``executemany``. Rows come back as tuples. The
        drivers' own errors are not wrapped by SQLAlchemy here: ``unavailable_as_error`` in
        ``mirror.database`` knows them.
        """
        cursor: Any = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        if isinstance(params, Mapping):
            cursor.execute(self._native(sql), params)
        else:
            cursor.executemany(self._native(sql), params)
        return cursor  # type: ignore[no-any-return]

    def execute_positional(
        self, connection: Connection, sql: str, params: Sequence[object]
    ) -> Iterable[tuple[Any, ...]]:
        """Run ``sql`` with ``?`` placeholders (SQLite's own style) bound in order.

        For statements with hundreds of parameters: SQLite looks a named one up by a linear
        search of the statement's names, which made binding them quadratic.
        """
        if self.postgres:
            raise ValueError("positional parameters are SQLite's; PostgreSQL binds by name")
        cursor: Any = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(sql, params)
        return cursor  # type: ignore[no-any-return]

    def _native(self, sql: str) -> str:
        return _pyformat(sql) if self.postgres else sql

    def id_list(self, column: str, parameter: str) -> str:
        """A condition ``column`` is one of the strings in ``parameter`` (see :meth:`ids`)."""
        return _ID_LISTS["postgresql" if self.postgres else "sqlite"].format(
            column=column, parameter=parameter
        )

    @staticmethod
    def ids(values: Sequence[str]) -> object:
        # A JSON array on both databases: msgspec encodes it in C, where psycopg would dump
        # a text[] element by element in Python.
        return msgspec.json.encode(list(values)).decode()

    def timestamp(self, value: datetime | None) -> object:
        # SQLAlchemy's SQLite DateTime stores naive UTC text in exactly this form.
        if value is None or self.postgres:
            return value
        return value.replace(tzinfo=None).isoformat(" ", "microseconds")

    def date(self, value: date | None) -> object:
        if value is None or self.postgres:
            return value
        return value.isoformat()

    @staticmethod
    def json(value: object) -> str | None:
        return None if value is None else msgspec.json.encode(value).decode()


# What Driver.id_list says; PostgreSQL's keeps ``= ANY(array)``, which its planner turns into
# one index scan, by making the array of the JSON first.
_ID_LISTS = {
    "sqlite": "{column} IN (SELECT value FROM json_each(:{parameter}))",
    "postgresql": "{column} = ANY(ARRAY(SELECT json_array_elements_text(:{parameter}::json)))",
}


class BulkStatement:
    """One statement over many rows.

    SQLite runs ``sqlite`` once per row (``executemany``: cheap in process). PostgreSQL runs
    ``postgres`` once for all rows, given as one JSON document (:func:`json_rows`), because a
    round trip or a bound parameter per row costs more than the work.
    """

    def __init__(self, columns: Sequence[tuple[str, str]], sqlite: str, postgres: str) -> None:
        if any(kind == "bytea" for _, kind in columns):
            raise ValueError("bytea does not travel in JSON: encode it (hex) and decode in SQL")
        self.columns = tuple(name for name, _ in columns)
        self._names = frozenset(self.columns)
        # A row's values in the statement's column order, picked in C.
        self._in_order = operator.itemgetter(*self.columns)
        self.sqlite = sqlite
        self.postgres = postgres

    def execute(
        self, connection: Connection, rows: Sequence[Mapping[str, Any]]
    ) -> Iterable[tuple[Any, ...]]:
        """Run the statement over ``rows``, each holding exactly the statement's columns."""
        if any(row.keys() != self._names for row in rows):
            raise ValueError(f"each row must hold exactly the columns {sorted(self._names)}")
        driver = Driver.of(connection)
        if not driver.postgres:
            return driver.execute(connection, self.sqlite, rows)
        in_order = self._in_order
        if len(self.columns) == 1:
            document = encode_rows([(in_order(row),) for row in rows])
        else:
            document = encode_rows([in_order(row) for row in rows])
        return driver.execute(connection, self.postgres, {JSON_ROWS: document})


JSON_ROWS = "rows_"


def json_rows(columns: Sequence[tuple[str, str]]) -> str:
    """Rows from the JSON document bound to ``:rows_`` (:func:`encode_rows`), as a subquery
    ``v`` with the given (column, PostgreSQL type) pairs: PostgreSQL's side of a bulk write.

    The rows travel as one JSON text, encoded in C by msgspec. Bound as arrays, psycopg
    dumped every value in Python (escaping each element with a regular expression): half the
    CPU of a reconcile pass went there.

    Each row is a JSON array of its values in the columns' order, read by position from
    ``jsonb``: against objects read by ``json_to_recordset``, the client encodes no column
    names and builds no mapping per row, and PostgreSQL spends half the CPU on the document
    (1,000 rows of 16 columns: 2.0 ms against 4.6 ms).

    A ``json`` column's value is the JSON text itself, carried as a string and cast here:
    read as JSON, a nested ``\u0000`` (which a ``json`` column keeps) would not survive.
    """
    selected = ", ".join(
        f"r->>{position} AS {name}" if kind == "text" else f"(r->>{position})::{kind} AS {name}"
        for position, (name, kind) in enumerate(columns)
    )
    return f"(SELECT {selected} FROM jsonb_array_elements(:{JSON_ROWS}::jsonb) AS r) AS v"


def encode_rows(rows: Sequence[Sequence[Any]]) -> str:
    """Rows (each its values in the PostgreSQL driver's form, in the order of the columns
    given to :func:`json_rows`) as :func:`json_rows` reads them.

    Timestamps become RFC 3339 text (with their offset, to the microsecond) and dates ISO
    dates, which PostgreSQL reads back as the same values; a ``json`` column's value is its
    JSON text (what :meth:`Driver.json` makes).
    """
    return _ROWS_ENCODER.encode(rows).decode()


def _plain(value: object) -> object:
    # str subclasses (a VersionKey, an enum's value) travel as the text they are.
    if isinstance(value, str):
        return str.__str__(value)
    raise TypeError(f"cannot encode a {type(value).__name__} for PostgreSQL")


_ROWS_ENCODER = msgspec.json.Encoder(enc_hook=_plain)


@functools.lru_cache(maxsize=256)
def _pyformat(sql: str) -> str:
    return _PLACEHOLDER.sub(r"%(\1)s", sql.replace("%", "%%"))


_DRIVERS = {"sqlite": Driver("sqlite"), "postgresql": Driver("postgresql")}
