"""mirror.records under concurrent writers: a reconcile pass marking the records it listed while
webhooks change the same records, in every order, on both databases."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, func, select

import mirror.records
from mirror.database import write_transaction
from mirror.driver import BulkStatement
from mirror.events import RecordWrite, Resource, record_write
from mirror.guard import RecordState, merge
from mirror.records import apply_writes
from mirror.schema import listed_records, patients
from mirror.states import Effect
from mirror.versions import Action
from tests.conftest import BACKENDS
from tests.factories import patient
from tests.mirror.test_ingest import mirror_rows

RUN = 7
POSTGRESQL_ONLY = [backend for backend in BACKENDS if backend != "sqlite"]
_IDS = [f"PAT{n:03d}" for n in range(48)]


def _write(
    record_id: str, moment: str, action: Action = Action.UPDATE, **fields: Any
) -> RecordWrite:
    return record_write(Resource.PATIENT, action, moment, patient(record_id, **fields))


def _apply(engine: Engine, writes: Sequence[RecordWrite], run: int | None) -> list[Effect]:
    return write_transaction(engine, lambda c: apply_writes(c, writes, seen_in_run=run))


def _batches(seed: int) -> list[tuple[list[RecordWrite], int | None]]:
    """A pass's listings (what the mirror holds already, or older: nothing to change) and
    webhooks' newer writes and deletes, over the same records, in batches of mixed order."""
    rng = random.Random(seed)
    batches: list[tuple[list[RecordWrite], int | None]] = []
    for listing in range(3):
        order = rng.sample(_IDS, len(_IDS))
        moment = "2024-01-02T00:00:00Z" if listing else "2024-01-01T00:00:00Z"
        writes = [_write(i, moment, phone="1" if listing else "0") for i in order]
        batches += [(writes[start : start + 12], RUN) for start in range(0, len(writes), 12)]
    for hour in range(10, 16):
        chosen = rng.sample(_IDS, 16)
        moment = f"2024-01-03T{hour}:00:00Z"
        writes = [
            _write(i, moment, Action.DELETE)
            if rng.random() < 0.2
            else _write(i, moment, phone=str(hour))
            for i in chosen
        ]
        batches += [(writes[:8], None), (writes[8:], None)]
    # A pass's batch that also carries a newer version of a few records: the locked path.
    newer = [_write(i, "2024-01-04T00:00:00Z", phone="new") for i in _IDS[:5]]
    batches.append(
        (newer + [_write(i, "2024-01-02T00:00:00Z", phone="1") for i in _IDS[20:30]], RUN)
    )
    rng.shuffle(batches)
    return batches


def _guarded(batches: Sequence[tuple[Sequence[RecordWrite], int | None]]) -> dict[str, object]:
    """Each record's outcome by the guard alone: its phone, or that it is deleted."""
    states = {i: merge(RecordState(), *_seed_write(i))[0] for i in _IDS}
    for writes, _ in batches:
        for write in writes:
            states[write.record_id] = merge(
                states[write.record_id], write.action, write.version, write.fields
            )[0]
    return {
        i: "deleted" if state.deleted else (state.fields or {})["phone"]
        for i, state in states.items()
    }


def _seed_write(record_id: str) -> tuple[Action, str, Any]:
    write = _write(record_id, "2024-01-02T00:00:00Z", phone="1")
    return write.action, write.version, write.fields


def _outcomes(rows: dict[str, list[dict[str, Any]]]) -> dict[str, object]:
    return {
        row["id"]: "deleted" if row["deleted_at"] is not None else row["phone"]
        for row in rows["patients"]
    }


def _clear(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(delete(patients))
        connection.execute(delete(listed_records))


def _listed(engine: Engine) -> dict[str, int]:
    """The pass that last listed each patient, by id."""
    with engine.connect() as connection:
        query = select(listed_records.c.record_id, listed_records.c.run_id).where(
            listed_records.c.resource == "patient"
        )
        return {str(record_id): int(run_id) for record_id, run_id in connection.execute(query)}


def _seed(engine: Engine) -> None:
    _apply(
        engine, [_write(i, "2024-01-02T00:00:00Z", phone="1") for i in _IDS], None
    )  # _seed_write


def test_passes_and_webhooks_writing_the_same_records_at_once_converge_without_deadlock(
    engine: Engine,
) -> None:
    """Writers that lock records in different orders (a pass's listing, webhooks) neither
    deadlock nor lose a write: the mirror ends as one writer applying every batch would leave
    it, with every listed record marked by its pass."""
    for seed in range(3):
        batches = _batches(seed)
        _seed(engine)
        for writes, run in batches:
            _apply(engine, writes, run)
        expected = mirror_rows(engine)
        assert _outcomes(expected) == _guarded(batches)
        _clear(engine)

        _seed(engine)
        together = threading.Barrier(4)

        def writer(
            chunk: list[tuple[list[RecordWrite], int | None]],
            together: threading.Barrier = together,
        ) -> None:
            together.wait()
            for writes, run in chunk:
                _apply(engine, writes, run)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(writer, [batches[k::4] for k in range(4)]))
        assert mirror_rows(engine) == expected
        assert _listed(engine) == dict.fromkeys(_IDS, RUN)
        _clear(engine)


_MOMENTS = ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z"]


@st.composite
def _listed_batches(draw: st.DrawFn) -> tuple[list[RecordWrite], list[RecordWrite]]:
    """What the mirror holds (records written, some deleted, some never), then one batch of a
    pass: older, equal and newer versions of them, deletes, the same record more than once."""
    ids = _IDS[:5]

    def one(record_id: str) -> RecordWrite:
        action = draw(st.sampled_from([Action.UPDATE, Action.UPDATE, Action.DELETE]))
        return _write(record_id, draw(st.sampled_from(_MOMENTS)), action,
                      phone=draw(st.sampled_from(["0", "1"])))  # fmt: skip

    held = [one(record_id) for record_id in draw(st.lists(st.sampled_from(ids), max_size=8))]
    batch = [one(record_id) for record_id in draw(st.lists(st.sampled_from(ids), max_size=12))]
    return held, batch


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=_listed_batches())
def test_a_batch_leaves_the_effects_and_rows_of_its_writes_one_by_one(
    engine: Engine, case: tuple[list[RecordWrite], list[RecordWrite]]
) -> None:
    """The guard decides a batch as it decides its writes one at a time, in order: the same
    effect for each write, the same rows, and every record the pass listed marked with it
    (those it refuses as outdated without merging them too)."""
    held, batch = case
    _clear(engine)
    for write in held:
        _apply(engine, [write], None)
    together = _apply(engine, batch, RUN)
    rows_together, listed_together = mirror_rows(engine), _listed(engine)

    _clear(engine)
    for write in held:
        _apply(engine, [write], None)
    one_by_one = [effect for write in batch for effect in _apply(engine, [write], RUN)]
    assert together == one_by_one
    assert rows_together == mirror_rows(engine)
    assert (
        listed_together
        == _listed(engine)
        == dict.fromkeys({write.record_id for write in batch}, RUN)
    )


@pytest.mark.parametrize("database_url", POSTGRESQL_ONLY, indirect=True)
def test_a_change_committed_after_a_pass_read_a_record_survives_the_pass(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a pass reads the records it listed without a lock and, finding nothing to
    change, only marks them. A webhook that commits a newer version of one in between keeps
    it, and the pass still marks it. (SQLite has one writer at a time: no in between.)"""
    _seed(engine)
    decided = mirror.records._without_outdated  # what the pass does right after its read
    interleaved: list[list[Effect]] = []
    webhook = threading.local()  # the webhook's own apply_writes decides as usual

    def webhook_in_between(*args: Any) -> list[int]:
        verdict = decided(*args)
        if not interleaved and not getattr(webhook, "running", False):
            webhook.running = True
            late = _write("PAT001", "2024-01-05T00:00:00Z", phone="late")
            interleaved.append(_apply(engine, [late], None))
        return verdict

    monkeypatch.setattr(mirror.records, "_without_outdated", webhook_in_between)
    listed = _IDS[:4]
    effects = _apply(engine, [_write(i, "2024-01-02T00:00:00Z", phone="1") for i in listed], RUN)

    assert interleaved == [[Effect.UPDATED]]
    assert effects == [Effect.STALE] * 4
    with engine.connect() as connection:
        query = select(patients).where(patients.c.id.in_(listed))
        rows = {row.id: row for row in connection.execute(query)}
    assert _listed(engine) == dict.fromkeys(listed, RUN)
    assert rows["PAT001"].phone == "late"
    assert rows["PAT002"].phone == "1"


def test_a_bulk_row_without_one_of_the_statements_columns_is_refused(engine: Engine) -> None:
    """On PostgreSQL the rows travel as JSON, where a missing column would read as NULL: a
    writer's row that lacks one (or has one too many) is a bug, refused before any write."""
    statement = BulkStatement([("id", "text"), ("phone", "text")], sqlite="SELECT 1",
                              postgres="SELECT 1")  # fmt: skip
    with engine.begin() as connection:
        for row in ({"id": "PAT001"}, {"id": "PAT001", "phone": "1", "extra": "2"}):
            with pytest.raises(ValueError, match="exactly the columns"):
                statement.execute(connection, [{"id": "PAT000", "phone": "0"}, row])


@pytest.mark.parametrize("database_url", POSTGRESQL_ONLY, indirect=True)
def test_bulk_rows_reach_postgresql_by_column_whatever_their_keys_order(engine: Engine) -> None:
    """PostgreSQL reads each row's values by position: a writer's row built in another key
    order, NULLs, quotes, non-ASCII text and a nested ``\\u0000`` in a json column all land
    in their own columns, as they were."""
    from datetime import UTC, date, datetime

    from mirror.driver import json_rows

    columns = [("id", "text"), ("born", "date"), ("at", "timestamptz"), ("n", "smallint"),
               ("raw", "json")]  # fmt: skip
    statement = BulkStatement(
        columns,
        sqlite="SELECT 1",
        postgres=f"SELECT id, born, at, n, raw::text FROM {json_rows(columns)} ORDER BY id",
    )
    moment = datetime(2026, 4, 1, 20, 6, 56, 396000, tzinfo=UTC)
    raw = '{"name":"Zoë \\"Q\\"","note":"a\\u0000b"}'
    rows = [
        {"raw": raw, "n": 7, "at": moment, "born": date(1990, 2, 28), "id": "PAT001"},
        {"id": "PAT002", "born": None, "at": None, "n": None, "raw": None},
        {"n": -3, "id": "PAT003 'x'", "raw": "[]", "at": moment, "born": date(2000, 1, 1)},
    ]
    with engine.begin() as connection:
        got = [tuple(row) for row in statement.execute(connection, rows)]
    assert got == [
        ("PAT001", date(1990, 2, 28), moment, 7, raw),
        ("PAT002", None, None, None, None),
        ("PAT003 'x'", date(2000, 1, 1), moment, -3, "[]"),
    ]


@pytest.mark.parametrize("database_url", POSTGRESQL_ONLY, indirect=True)
def test_the_sweep_looks_listed_records_up_by_key_before_any_analyze(engine: Engine) -> None:
    """Right after a first pass, PostgreSQL has no statistics on the new rows and took both
    tables for a few rows: a join of them ran as a nested loop over every pair (quadratic). The
    sweep's queries look each record's mark up through the key instead, whatever the planner
    believes of the tables' sizes."""
    _apply(engine, [_write(i, "2024-01-02T00:00:00Z") for i in _IDS], RUN)
    started = datetime.now(UTC)
    queries = [
        select(func.count()).select_from(
            mirror.records._unlisted(Resource.PATIENT, RUN + 1, started).subquery()
        ),
        mirror.records._unlisted(Resource.PATIENT, RUN + 1, started).add_columns(
            mirror.records._last_listed(Resource.PATIENT)
        ),
    ]
    with engine.connect() as connection:
        for query in queries:
            compiled = query.compile(dialect=connection.dialect)
            plan = "\n".join(
                row[0] for row in connection.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params)
            )
            assert "Index Scan using pk_listed_records" in plan
            assert "Join" not in plan
