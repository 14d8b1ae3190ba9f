"""What SQLite alone costs to store the rows a first reconcile pass writes: the floor under
ours' first pass on SQLite, set beside dlt's CPU in ``README.md``'s issue-15 section.

Given a mirror that a first pass filled (``--source``), each round copies its rows (every
patient, and every event-log row the pass wrote) into a fresh, migrated database with plain
``sqlite3`` ``executemany``, a thousand patients and their events a transaction (ten pages:
``sync/mark.py``'s), with our connection settings (WAL, ``synchronous=FULL``, a 16 MiB
cache). The rows are read into memory first; only the writes are timed, as CPU seconds
(user + system) of this process. No HTTP, no JSON, no guard, no SQLAlchemy: what remains is
SQLite's own work, its indexes' and its fsyncs'. ``--no-secondary-indexes`` drops every
index but the keys first, to show what the mirror's indexes (FHIR search, the analysts', the
feed's, replay's and redelivery dedup's) cost.

    healthdock-mirror sync patients        # into sqlite:////tmp/source.db, from the fake
    .venv/bin/python -m bench.sync.write_floor --source /tmp/source.db --rounds 3
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

BIN = Path(sys.executable).parent
PATIENTS_PER_TRANSACTION = 1000  # ten pages of 100
TABLES = ("patients", "webhook_events")
# Our connection's settings (mirror/database.py).
PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", "cache_size=-16384")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _columns(connection: sqlite3.Connection, table: str) -> list[str]:
    # seq is the event log's key: SQLite assigns it, as it did for ours.
    names = [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
    return [name for name in names if name != "seq"]


def migrated_database(path: Path) -> None:
    """An empty mirror at ``path``, migrated by our own command (not timed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHDOCK_")}
    env["HEALTHDOCK_DATABASE_URL"] = f"sqlite:///{path}"
    subprocess.run(
        [str(BIN / "healthdock-mirror"), "migrate"], env=env, check=True, capture_output=True
    )


def load(source: Path) -> list[tuple[list[tuple[object, ...]], list[tuple[object, ...]]]]:
    """The source's rows, grouped into transactions: (patients, their event-log rows)."""
    connection = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    patient_columns = _columns(connection, "patients")
    event_columns = _columns(connection, "webhook_events")
    patients = connection.execute(
        f"SELECT {', '.join(patient_columns)} FROM patients ORDER BY id"
    ).fetchall()
    events: dict[object, list[tuple[object, ...]]] = {}
    for row in connection.execute(
        f"SELECT record_id, {', '.join(event_columns)} FROM webhook_events "
        "WHERE resource = 'patient' ORDER BY seq"
    ):
        events.setdefault(row[0], []).append(row[1:])
    connection.close()
    if not patients:
        raise SystemExit(f"{source} holds no patients: fill it with a first pass first")
    batches = []
    for start in range(0, len(patients), PATIENTS_PER_TRANSACTION):
        chunk = patients[start : start + PATIENTS_PER_TRANSACTION]
        batches.append((chunk, [e for row in chunk for e in events.get(row[0], [])]))
    return batches


def write(target: Path, source: Path, batches: Sequence[tuple[list, list]], lean: bool) -> float:
    """CPU seconds of writing ``batches`` into ``target``."""
    connection = sqlite3.connect(target, isolation_level=None)
    for pragma in PRAGMAS:
        connection.execute(f"PRAGMA {pragma}")
    if lean:
        for table in TABLES:
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                "AND sql IS NOT NULL",
                (table,),
            ).fetchall():
                connection.execute(f'DROP INDEX "{name}"')
    reader = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    statements = []
    for table in TABLES:
        columns = _columns(reader, table)
        marks = ", ".join("?" for _ in columns)
        statements.append(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})")
    reader.close()
    began = _cpu()
    for patients, events in batches:
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(statements[0], patients)
        connection.executemany(statements[1], events)
        connection.execute("COMMIT")
    spent = _cpu() - began
    connection.close()
    return spent


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a mirror a first pass filled")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    batches = load(args.source)
    patients = sum(len(p) for p, _ in batches)
    events = sum(len(e) for _, e in batches)
    print(f"{patients} patients and {events} event-log rows in {len(batches)} transactions")
    spent: dict[str, list[float]] = {"with the mirror's indexes": [], "keys only": []}
    with tempfile.TemporaryDirectory(prefix="write-floor-") as workdir:
        for round_number in range(1, args.rounds + 1):
            for label, lean in (("with the mirror's indexes", False), ("keys only", True)):
                target = Path(workdir) / f"{round_number}-{int(lean)}.db"
                migrated_database(target)
                seconds = write(target, args.source, batches, lean)
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
