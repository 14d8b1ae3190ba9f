"""bench/ingest/committer.py: its flags, a measurement that stores every event, the table."""

from __future__ import annotations

import pytest

from bench.ingest.committer import Measurement, incoming_events, measure, parse_args, report
from mirror import create_mirror_engine, upgrade


def test_flags_are_checked() -> None:
    args = parse_args(["--databases", "sqlite", "--sizes", "8,32", "--prefill", "0"])
    assert args.databases == ["sqlite"]
    assert args.sizes == [8, 32]
    for bad in (["--databases", "mysql"], ["--sizes", "0"], ["--prefill", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_a_measurement_stores_every_event(database_url: str) -> None:
    engine = create_mirror_engine(database_url)
    upgrade(engine)
    engine.dispose()
    kind = "sqlite" if database_url.startswith("sqlite") else "postgres"
    items = incoming_events(300 + 8 + 64)
    measured = measure(kind, database_url, 8, 1, items, prefill=300)
    # measure() itself refuses a run that lost an event; the measured part excludes the rest.
    assert measured.events == 64
    assert measured.wall_s > 0
    assert measured.committer_cpu_s >= 0
    assert (measured.database_cpu_s is None) == (kind == "sqlite")


def test_the_table_reports_medians_per_database_and_size() -> None:
    def run(database: str, size: int, round_number: int, wall_s: float) -> Measurement:
        return Measurement(database, size, round_number, 1000, wall_s, wall_s / 2,
                           None if database == "sqlite" else wall_s / 4)  # fmt: skip

    table = report(
        [
            run("sqlite", 32, 1, 0.1), run("sqlite", 32, 2, 0.5), run("sqlite", 32, 3, 0.2),
            run("postgres", 32, 1, 0.25),
        ]
    )  # fmt: skip
    rows = table.splitlines()[2:]
    # SQLite: median wall 0.2 s for 1,000 events is 5,000 events/s, 6.40 ms a batch of 32, and
    # 100 µs of committer CPU an event; PostgreSQL's server CPU is its own column.
    assert rows == [
        "| postgres | 32 | 4,000 | 8.00 | 125 µs | 62 µs |",
        "| sqlite | 32 | 5,000 | 6.40 | 100 µs | — |",
    ]
