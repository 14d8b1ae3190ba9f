"""bench/fhir/seed.py: the rows it writes directly are the rows the service's writer stores."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.fhir.seed import Plan, SeedError, row_differences, seed, tombstoned
from mirror import Resource, create_mirror_engine, read_transaction, record_counts
from tests.conftest import postgres_schema

# Several batches, and tombstones in both tables (records 50, 150, 250, ...).
PLAN = Plan(patients=260, appointments=1_100, batch=96, workers=0)


@contextlib.contextmanager
def another_database(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second empty database of the same kind as ``database_url``."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'direct.db'}"
        return
    with postgres_schema() as url:
        yield url


def counts(database_url: str, resource: Resource) -> tuple[int, int]:
    engine = create_mirror_engine(database_url)
    try:
        found = read_transaction(engine, lambda c: record_counts(c, resource))
    finally:
        engine.dispose()
    return found.live, found.deleted


def test_direct_rows_equal_the_writers(database_url: str, tmp_path: Path) -> None:
    with another_database(database_url, tmp_path) as direct_url:
        writer = seed(database_url, dataclasses.replace(PLAN, method="writer"))
        # Built in a worker process, as the command line does by default.
        direct = seed(direct_url, dataclasses.replace(PLAN, method="direct", workers=1))

        assert row_differences(database_url, direct_url) == []
        deleted = {
            resource: sum(tombstoned(i) for i in range(1, PLAN.count(resource) + 1))
            for resource in Resource
        }
        assert deleted == {Resource.PATIENT: 3, Resource.APPOINTMENT: 11}
        for url in (database_url, direct_url):
            for resource in Resource:
                live = PLAN.count(resource) - deleted[resource]
                assert counts(url, resource) == (live, deleted[resource])
    assert {n: (t.rows, t.tombstoned) for n, t in writer.tables.items()} == {
        "patients": (260, 3),
        "appointments": (1_100, 11),
    }
    assert {n: (t.rows, t.tombstoned) for n, t in direct.tables.items()} == {
        n: (t.rows, t.tombstoned) for n, t in writer.tables.items()
    }


def test_a_different_record_is_noticed(tmp_path: Path) -> None:
    """The comparison is not vacuous: another seed's population differs, column by column."""
    first, second = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    small = dataclasses.replace(PLAN, patients=20, appointments=40)
    seed(first, small)
    seed(second, dataclasses.replace(small, seed=1))
    differences = row_differences(first, second)
    assert "patients PAT000001: first_name differs" in differences


def test_a_database_with_records_is_refused_unless_replaced(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mirror.db'}"
    small = dataclasses.replace(PLAN, patients=20, appointments=40)
    seed(url, small)
    with pytest.raises(SeedError, match="not empty"):
        seed(url, dataclasses.replace(small, patients=30))
    assert counts(url, Resource.PATIENT) == (20, 0)

    seed(url, dataclasses.replace(small, patients=30), replace=True)
    assert counts(url, Resource.PATIENT) == (30, 0)


def test_replace_refuses_the_test_suites_database() -> None:
    with pytest.raises(SeedError, match="refuses to drop"):
        seed("postgresql://postgres@127.0.0.1:5432/test", PLAN, replace=True)
