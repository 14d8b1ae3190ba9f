"""bench/sync/write_floor.py: the floor stores exactly the rows a first pass stored, with or
without the mirror's secondary indexes, so its CPU-seconds are the same work's."""

from __future__ import annotations

import contextlib
import io
import sqlite3
from pathlib import Path

import pytest

from bench.sync import write_floor
from fake_healthdock import FakeHealthDock, serve_in_thread
from mirror import create_mirror_engine, upgrade
from tests.bench.sync.first_pass import fill_patients

API_KEY = "write-floor-api-key"
PATIENTS = 1230  # two transactions of the floor's, the second one short


def first_pass_mirror(path: Path) -> Path:
    engine = create_mirror_engine(f"sqlite:///{path}")
    upgrade(engine)
    fake = FakeHealthDock(seed=9, patients=PATIENTS, api_key=API_KEY, rate_limit=None)
    with serve_in_thread(fake) as base_url:
        fill_patients(engine, base_url, API_KEY)
    engine.dispose()
    return path


def rows(path: Path, table: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        columns = write_floor._columns(db, table)  # every column but the event log's seq
        return sorted(db.execute(f"SELECT {', '.join(columns)} FROM {table}"), key=repr)


def secondary_indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        tables = write_floor.TABLES
        return {name for table in tables for name in write_floor.secondary_indexes(db, table)}


def test_the_floor_writes_every_row_the_first_pass_wrote_and_only_those(tmp_path: Path) -> None:
    source = first_pass_mirror(tmp_path / "source.db")
    copied = write_floor.load(source)
    assert [len(patients) for patients, _, _ in copied.transactions] == [1000, 230]
    assert [len(marks) for _, _, marks in copied.transactions] == [1000, 230]

    for lean in (False, True):
        target = tmp_path / f"target-{int(lean)}.db"
        write_floor.migrated_database(target)
        assert write_floor.write(target, copied, lean) > 0
        for table in write_floor.TABLES:
            assert rows(target, table) == rows(source, table)
        assert len(rows(target, "webhook_events")) == PATIENTS  # one created event a patient
        assert len(rows(target, "listed_records")) == PATIENTS  # each marked by the pass
        kept = secondary_indexes(target)
        if lean:
            assert kept == set()
        else:
            assert kept
            assert kept == secondary_indexes(source)


def test_the_report_gives_both_medians_per_patient(tmp_path: Path) -> None:
    source = first_pass_mirror(tmp_path / "source.db")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        write_floor.main(["--source", str(source), "--rounds", "1"])
    text = out.getvalue()
    assert text.startswith(f"{PATIENTS} patients and {PATIENTS} event-log rows in 2 transactions")
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[2:]] == [
        "| with the mirror's indexes", "| keys only"]  # fmt: skip


def test_an_empty_source_is_refused_not_measured(tmp_path: Path) -> None:
    source = tmp_path / "empty.db"
    write_floor.migrated_database(source)
    with pytest.raises(SystemExit, match="holds no patients"):
        write_floor.load(source)
