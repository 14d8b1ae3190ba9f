"""What SQLite alone costs to store the rows a first reconcile pass writes: the floor under
ours' first pass on SQLite, set beside dlt's CPU in ``README.md``'s issue-15 section.

Given a mirror that a first pass filled (``--source``), each round copies its rows (every
patient, every event-log row the pass wrote, and its marks in ``listed_records``) into a fresh,
migrated database with plain ``sqlite3`` ``executemany``, a thousand patients and their events
a transaction (ten pages: ``sync/mark.py``'s), with our connection settings (WAL,
``synchronous=FULL``, a 16 MiB cache). The rows are read into memory first; only the writes are
timed, as CPU seconds (user + system) of this process. No HTTP, no JSON, no guard, no
SQLAlchemy: what remains is SQLite's own work, its indexes' and its fsyncs'. Each round writes
twice: into the mirror as migrated, and into one with every index but the keys dropped first,
which shows what the mirror's indexes (FHIR search, the analysts', the feed's, replay's and
redelivery dedup's) cost.

    healthdock-mirror sync patients        # into sqlite:////tmp/source.db, from the fake
    .venv/bin/python -m bench.sync.write_floor --source /tmp/source.db --rounds 3
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.processes import BenchError, process_cpu_seconds
from bench.sync.run import base_env

BIN = Path(sys.executable).parent
PATIENTS_PER_TRANSACTION = 1000  # ten pages of 100
TABLES = ("patients", "webhook_events", "listed_records")
# Our connection's settings (mirror/database.py).
PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", "cache_size=-16384")


Row = tuple[object, ...]


@dataclass(frozen=True)
class Rows:
    """What a first pass stored, read from its mirror: each table's columns (the event log's
    ``seq`` left out: SQLite assigns it, as it did for ours) and the rows a transaction at a
    time, (patients, their event-log rows, their marks)."""

    columns: dict[str, list[str]]
    transactions: list[tuple[list[Row], list[Row], list[Row]]]

    def inserts(self) -> list[str]:
        """One INSERT a table, in :data:`TABLES`' order, binding by position."""
        return [
            f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
            for table, names in ((t, self.columns[t]) for t in TABLES)
        ]


def _columns(connection: sqlite3.Connection, table: str) -> list[str]:
    names = [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
    return [name for name in names if name != "seq"]


def secondary_indexes(connection: sqlite3.Connection, table: str) -> list[str]:
    """The indexes of ``table`` beyond its keys (SQLite's own have no SQL)."""
    return [
        name
        for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
            "AND sql IS NOT NULL",
            (table,),
        )
    ]


def migrated_database(path: Path) -> None:
    """An empty mirror at ``path``, migrated by our own command (not timed)."""
    done = subprocess.run(
        [str(BIN / "healthdock-mirror"), "migrate"],
        env={**base_env(), "HEALTHDOCK_DATABASE_URL": f"sqlite:///{path}"},
        cwd=path.parent,  # not the repository: its .env, if any, must not configure the run
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"healthdock-mirror migrate failed:\n{done.stdout}{done.stderr}")


def load(source: Path) -> Rows:
    """The source's rows, grouped into transactions of :data:`PATIENTS_PER_TRANSACTION`."""
    connection = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    columns = {table: _columns(connection, table) for table in TABLES}
    patients = connection.execute(
        f"SELECT {', '.join(columns['patients'])} FROM patients ORDER BY id"
    ).fetchall()
    events: dict[object, list[Row]] = {}
    for row in connection.execute(
        f"SELECT record_id, {', '.join(columns['webhook_events'])} FROM webhook_events "
        "WHERE resource = 'patient' ORDER BY seq"
    ):
        events.setdefault(row[0], []).append(row[1:])
    marks = {
        row[columns["listed_records"].index("record_id")]: row
        for row in connection.execute(
            f"SELECT {', '.join(columns['listed_records'])} FROM listed_records "
            "WHERE resource = 'patient'"
        )
    }
    connection.close()
    if not patients:
        raise SystemExit(f"{source} holds no patients: fill it with a first pass first")
    transactions = []
    for start in range(0, len(patients), PATIENTS_PER_TRANSACTION):
        chunk = patients[start : start + PATIENTS_PER_TRANSACTION]
        transactions.append((
            chunk,
            [e for row in chunk for e in events.get(row[0], [])],
            [marks[row[0]] for row in chunk if row[0] in marks],
        ))  # fmt: skip
    return Rows(columns, transactions)


def write(target: Path, rows: Rows, lean: bool) -> float:
    """CPU seconds of writing ``rows`` into ``target``."""
    connection = sqlite3.connect(target, isolation_level=None)
    for pragma in PRAGMAS:
        connection.execute(f"PRAGMA {pragma}")
    if lean:
        for table in TABLES:
            for name in secondary_indexes(connection, table):
                connection.execute(f'DROP INDEX "{name}"')
    insert_patients, insert_events, insert_marks = rows.inserts()
    began = process_cpu_seconds(os.getpid())
    for patients, events, marks in rows.transactions:
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(insert_patients, patients)
        connection.executemany(insert_events, events)
        connection.executemany(insert_marks, marks)
        connection.execute("COMMIT")
    spent = process_cpu_seconds(os.getpid()) - began
    connection.close()
    return spent


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a mirror a first pass filled")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rows = load(args.source)
    patients = sum(len(p) for p, _, _ in rows.transactions)
    events = sum(len(e) for _, e, _ in rows.transactions)
    count = len(rows.transactions)
    print(f"{patients} patients and {events} event-log rows in {count} transactions")
    spent: dict[str, list[float]] = {"with the mirror's indexes": [], "keys only": []}
    with tempfile.TemporaryDirectory(prefix="write-floor-") as workdir:
        for round_number in range(1, args.rounds + 1):
            for label, lean in (("with the mirror's indexes", False), ("keys only", True)):
                target = Path(workdir) / f"{round_number}-{int(lean)}.db"
                migrated_database(target)
                seconds = write(target, rows, lean)
                spent[label].append(seconds)
                print(f"round {round_number}, {label}: {seconds:.2f} CPU-s", flush=True)
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{target}{suffix}").unlink(missing_ok=True)
    print()
    print("| writes | CPU-s (median) | rounds | µs per patient |")
    print("| --- | ---: | --- | ---: |")
    for label, values in spent.items():
        median = statistics.median(values)
        rounds = " / ".join(f"{v:.2f}" for v in values)
        print(f"| {label} | {median:.2f} | {rounds} | {1e6 * median / patients:.1f} |")


if __name__ == "__main__":
    main()
