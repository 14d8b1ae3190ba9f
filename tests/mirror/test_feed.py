"""The change feed's query on real databases: every event once, in order, whatever writers do."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Collection
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text, update
from sqlalchemy.exc import IntegrityError

from mirror.database import create_mirror_engine, write_transaction
from mirror.eventlog import IncomingEvent, Outcome, store_events
from mirror.events import parse_event
from mirror.feed import FeedError, decode_cursor, encode_cursor, read_feed
from mirror.ingest import ingest
from mirror.migrate import upgrade
from mirror.schema import webhook_events
from mirror.states import EventSource, EventStatus
from tests.factories import appointment, encode, event, patient

TYPES = ["patient.created", "patient.updated", "appointment.created", "invoice.paid"]
_records = itertools.count(1)


def incoming(event_type: str, source: str = EventSource.WEBHOOK) -> IncomingEvent:
    number = next(_records)
    data = appointment(f"APT{number}") if event_type.startswith("appointment") else patient()
    document = event(event_type, {**data, "patient_id": f"PAT{number}"})
    parsed = parse_event(document)
    return IncomingEvent(source, f"test:{number}", parsed, encode(document), [], datetime.now(UTC))


def write(engine: Engine, event_types: list[str]) -> list[int]:
    receipts = ingest(engine, [incoming(kind) for kind in event_types])
    return [receipt.seq for receipt in receipts if receipt.seq is not None]


def stored_seqs(engine: Engine, event_types: Collection[str] = ()) -> list[int]:
    query = select(webhook_events.c.seq).order_by(webhook_events.c.seq)
    if event_types:
        query = query.where(webhook_events.c.event_type.in_(event_types))
    with engine.connect() as connection:
        return list(connection.execute(query).scalars())


def read_until(
    engine: Engine,
    cursor: str,
    count: int,
    *,
    limit: int = 5,
    event_types: Collection[str] = (),
    seconds: float = 60.0,
) -> tuple[list[int], str]:
    """Read from ``cursor`` until ``count`` events came (PostgreSQL: an open transaction
    anywhere on the server holds the feed back for a while), then once more past them."""
    deadline = time.monotonic() + seconds
    seen: list[int] = []
    while True:
        page = read_feed(engine, cursor, limit=limit, event_types=event_types)
        seen += [item.seq for item in page.events]
        cursor = page.next_cursor
        if len(seen) >= count and not page.has_more:
            return seen, cursor
        if not page.has_more:
            assert time.monotonic() < deadline, f"the feed gave {len(seen)} of {count} events"
            time.sleep(0.05)


def naive_read(engine: Engine, after_seq: int) -> list[int]:
    """What a ``seq > cursor`` feed returns: it can skip events (see the test below)."""
    with engine.connect() as connection:
        query = select(webhook_events.c.seq).where(webhook_events.c.seq > after_seq)
        return list(connection.execute(query.order_by(webhook_events.c.seq)).scalars())


@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("write"), st.lists(st.sampled_from(TYPES), min_size=1, max_size=6)),
            st.tuples(st.just("read"), st.integers(min_value=1, max_value=5)),
        ),
        max_size=10,
    ),
    wanted=st.sets(st.sampled_from(TYPES), max_size=2),
    scan_rows=st.integers(min_value=1, max_value=4),
)
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_paging_with_any_limits_and_filter_gives_each_event_once_in_order(
    engine: Engine,
    steps: list[tuple[str, object]],
    wanted: set[str],
    scan_rows: int,
) -> None:
    cursor, seen = "0", []
    for kind, argument in steps:
        if kind == "write":
            write(engine, argument)  # type: ignore[arg-type]
            continue
        page = read_feed(
            engine,
            cursor,
            limit=argument,
            event_types=wanted,
            scan_rows=scan_rows,  # type: ignore[arg-type]
        )
        assert len(page.events) <= argument  # type: ignore[operator]
        assert all(not wanted or item.event_type in wanted for item in page.events)
        seen += [item.seq for item in page.events]
        cursor = page.next_cursor
    expected = stored_seqs(engine, wanted)
    rest, cursor = read_until(engine, cursor, len(expected) - len(seen), event_types=wanted)
    assert seen + rest == expected
    # Caught up: the cursor stays where it is, and nothing comes twice.
    again = read_feed(engine, cursor, event_types=wanted)
    assert (again.events, again.next_cursor, again.has_more) == ([], cursor, False)


def test_a_filter_moves_the_cursor_past_the_events_it_leaves_out(engine: Engine) -> None:
    write(engine, ["patient.created"] * 3 + ["appointment.created"] * 4 + ["patient.updated"])
    seen, cursor = read_until(engine, "0", 1, event_types={"patient.updated"})
    assert len(seen) == 1
    # Past everything examined: an unfiltered read from here has nothing older.
    assert read_feed(engine, cursor).events == []
    [later] = write(engine, ["appointment.created"])
    assert read_until(engine, cursor, 1)[0] == [later]


def test_a_type_filter_examines_a_bounded_number_of_events_per_read(engine: Engine) -> None:
    write(engine, ["appointment.created"] * 7 + ["patient.updated"])
    first = read_feed(engine, "0", limit=2, event_types={"patient.updated"}, scan_rows=3)
    # Three examined, none matched: nothing to return, but the cursor moved and says more.
    assert (first.events, first.has_more) == ([], True)
    assert first.next_cursor != "0"
    seen, _ = read_until(engine, first.next_cursor, 1, event_types={"patient.updated"})
    assert seen == stored_seqs(engine, {"patient.updated"})


def test_event_fields_and_payload(engine: Engine) -> None:
    item = incoming("patient.created")
    [seq] = write_transaction(
        engine,
        lambda c: list(store_events(c, [(item, Outcome(EventStatus.APPLIED, "created"))]).values()),
    )
    reconciled = incoming("patient.updated", source=EventSource.RECONCILE)
    write_transaction(
        engine, lambda c: store_events(c, [(reconciled, Outcome(EventStatus.APPLIED, "updated"))])
    )
    page = read_feed(engine, "0")
    while len(page.events) < 2:  # PostgreSQL: another test's open transaction may hold it back
        page = read_feed(engine, "0")
    first, second = page.events
    assert first.seq == seq
    assert (first.source, first.event_type, first.status, first.effect) == (
        EventSource.WEBHOOK,
        "patient.created",
        "applied",
        "created",
    )
    assert (first.resource, first.record_id) == ("patient", item.event.write.record_id)  # type: ignore[union-attr]
    assert first.event_id == item.event.event_id
    assert first.event_timestamp == "2024-01-12T10:30:00Z"
    assert first.version == item.event.write.version  # type: ignore[union-attr]
    assert first.received_at == item.received_at
    assert first.payload == json.loads(item.body)
    assert (second.source, second.event_type) == (EventSource.RECONCILE, "patient.updated")


def test_a_pruned_payload_is_null_and_the_event_stays_in_the_feed(engine: Engine) -> None:
    [seq] = write(engine, ["patient.created"])
    # What retention does to an old event (another module owns that): the body goes.
    with engine.begin() as connection:
        connection.execute(
            update(webhook_events)
            .where(webhook_events.c.seq == seq)
            .values(body=None, body_pruned_at=datetime.now(UTC))
        )
    page = read_feed(engine, "0")
    while not page.events:
        page = read_feed(engine, "0")
    assert [(item.seq, item.payload) for item in page.events] == [(seq, None)]


@given(st.text(max_size=30))
def test_a_cursor_decodes_to_what_encodes_it_or_is_refused(cursor: str) -> None:
    try:
        position = decode_cursor(cursor)
    except FeedError:
        return
    assert encode_cursor(position) == cursor


@pytest.mark.parametrize(
    "cursor", ["", "abc", "1", "1.", ".1", "01.2", "1.02", "-1.2", "1.0", "0.0", f"1.{2**63}"]
)
def test_garbled_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(FeedError):
        decode_cursor(cursor)


def test_a_cursor_this_feed_did_not_issue_is_refused(engine: Engine) -> None:
    write(engine, ["patient.created"])
    for cursor in ("0.999999", "999.1"):
        with pytest.raises(FeedError, match="unknown cursor"):
            read_feed(engine, cursor)


@pytest.mark.parametrize("limit", [0, -1, 1001])
def test_limits_out_of_range_are_refused(engine: Engine, limit: int) -> None:
    with pytest.raises(FeedError, match="limit"):
        read_feed(engine, "0", limit=limit)


def test_an_open_writer_holds_the_feed_back_instead_of_being_skipped(postgres_url: str) -> None:
    """T1 stores an event (the lower seq) and stays open; T2 stores one and commits. A feed
    that returned T2's event now would move past T1's and never return it."""
    engine = create_mirror_engine(postgres_url, timeout_seconds=2.0)
    upgrade(engine)
    try:
        [before] = write(engine, ["patient.created"])
        seen, cursor = read_until(engine, "0", 1)
        assert seen == [before]
        with engine.connect() as t1:
            t1.begin()
            [seq_t1] = store_events(
                t1, [(incoming("patient.updated"), Outcome(EventStatus.APPLIED))]
            ).values()
            [seq_t2] = write(engine, ["patient.updated"])
            assert seq_t1 < seq_t2

            # The naive feed hands out T2's event now; its consumer moves its cursor past it.
            assert naive_read(engine, before) == [seq_t2]
            # Ours waits for T1.
            page = read_feed(engine, cursor)
            assert (page.events, page.next_cursor, page.has_more) == ([], cursor, False)
            t1.commit()

        # Once T1 has committed, the naive consumer (at seq_t2) never sees T1's event: skipped.
        assert naive_read(engine, seq_t2) == []
        # Ours returns both, T1's first, each once.
        seen, cursor = read_until(engine, cursor, 2, limit=1)
        assert seen == [seq_t1, seq_t2]
        assert read_feed(engine, cursor).events == []
    finally:
        engine.dispose()


def test_rows_from_before_the_feed_migration_come_first(postgres_url: str) -> None:
    """Events stored before the txid column existed are backfilled so the feed reads them."""
    engine = create_mirror_engine(postgres_url, timeout_seconds=2.0)
    upgrade(engine, "aecd07aff613")  # the revision before the feed's
    try:
        old = write_transaction(engine, lambda c: _store_old_style(c))
        upgrade(engine)
        [new] = write(engine, ["patient.updated"])
        seen, _ = read_until(engine, "0", 3)
        assert seen == [*old, new]
    finally:
        engine.dispose()


def _store_old_style(connection: object) -> list[int]:
    """Two events as the code before the feed stored them: no txid column at all."""
    seqs = []
    for number in range(2):
        row = connection.execute(  # type: ignore[attr-defined]
            text(
                "INSERT INTO webhook_events (source, dedup_key, event_type, event_timestamp, "
                "status, attempts, received_at, headers, body) VALUES ('webhook', :key, "
                "'patient.created', '2024-01-12T10:30:00Z', 'applied', 1, now(), '[]', "
                "'{}') RETURNING seq"
            ),
            {"key": f"old:{number}"},
        )
        seqs.append(row.scalar_one())
    return seqs


def test_an_event_written_without_a_txid_is_fed(postgres_url: str) -> None:
    """A receiver older than the feed, still running during an upgrade, names no txid: the
    column's default gives its events one, where they used to be never fed."""
    engine = create_mirror_engine(postgres_url, timeout_seconds=2.0)
    upgrade(engine)
    try:
        [before] = write(engine, ["patient.updated"])
        old = write_transaction(engine, lambda c: _store_old_style(c))
        [after] = write(engine, ["patient.updated"])
        seen, _ = read_until(engine, "0", 4)
        assert sorted(seen) == sorted([before, *old, after])
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("column", "value"),
    [("status", "'done'"), ("source", "'api'"), ("effect", "'merged'")],
)
def test_the_database_refuses_a_state_the_code_does_not_know(
    engine: Engine, column: str, value: str
) -> None:
    values = {"status": "'applied'", "source": "'webhook'", "effect": "NULL", column: value}
    insert = text(
        "INSERT INTO webhook_events (source, dedup_key, event_type, event_timestamp, status, "
        f"effect, attempts, received_at, headers) VALUES ({values['source']}, 'k', 'x', '', "
        f"{values['status']}, {values['effect']}, 1, CURRENT_TIMESTAMP, '[]')"
    )
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(insert)
