"""GET /events as its consumers call it: paging, filters, auth, reconcile events, concurrency."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import Connection

from examples.feed_consumer import catch_up, load_cursor
from fake_healthdock import FakeHealthDock
from mirror.database import write_transaction
from mirror.eventlog import IncomingEvent, Outcome, store_events
from mirror.events import Resource, parse_event
from mirror.ingest import ingest
from mirror.schema import webhook_events
from mirror.states import EventSource, EventStatus
from receiver import create_app
from sync import PassOptions, reconcile
from tests.conftest import make_settings
from tests.factories import appointment, encode, event, patient, signed
from tests.sync.conftest import API_KEY, Upstream

TOKEN = "feed-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
_numbers = itertools.count(1)


@pytest.fixture
def feed_client(database_url: str, engine: Engine) -> Iterator[TestClient[Litestar]]:
    """The receiver with an admin token configured."""
    settings = make_settings(database_url, admin_token=TOKEN)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def post_event(client: TestClient[Litestar], document: dict[str, Any]) -> int:
    body = encode(document)
    response = client.post("/webhooks/healthdock", content=body, headers=signed(body))
    assert response.status_code == 200, response.text
    seq: int = response.json()["data"]["seq"]
    return seq


def post_events(client: TestClient[Litestar], count: int) -> list[int]:
    kinds = ("patient.created", "patient.updated", "appointment.created", "invoice.paid")
    seqs = []
    for number, kind in zip(range(count), itertools.cycle(kinds), strict=False):
        data = appointment(f"APT{number}") if kind.startswith("appointment") else patient()
        seqs.append(post_event(client, event(kind, {**data, "patient_id": f"PAT{number}"})))
    return seqs


def store_reconcile_events(engine: Engine, count: int) -> list[int]:
    items = []
    for _ in range(count):
        number = next(_numbers)
        document = event("patient.updated", patient(f"PATR{number}"), event_id=None)
        item = IncomingEvent(
            EventSource.RECONCILE,
            f"test-run:{number}",
            parse_event(document),
            encode(document),
            [],
            datetime.now(UTC),
        )
        items.append((item, Outcome(EventStatus.APPLIED, "updated")))
    return sorted(write_transaction(engine, lambda c: store_events(c, items)).values())


def get_feed(client: TestClient[Litestar], headers: dict[str, str] = AUTH, **params: Any) -> Any:
    return client.get("/events", params=params, headers=headers)


def read_until(
    client: TestClient[Litestar], cursor: str, count: int, seconds: float = 60.0, **params: Any
) -> tuple[list[dict[str, Any]], str]:
    """Page from ``cursor`` until ``count`` events came, then until the feed has no more.

    On PostgreSQL an open write transaction anywhere on the server (other tests run on it)
    holds the feed back for a moment: waited for, with a deadline."""
    deadline = time.monotonic() + seconds
    events: list[dict[str, Any]] = []
    while True:
        response = get_feed(client, after=cursor, **params)
        assert response.status_code == 200, response.text
        page = response.json()["data"]
        events += page["events"]
        cursor = page["next_cursor"]
        if page["has_more"]:
            continue
        if len(events) >= count:
            return events, cursor
        assert time.monotonic() < deadline, f"the feed gave {len(events)} of {count} events"
        time.sleep(0.05)


def all_seqs(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        query = select(webhook_events.c.seq).order_by(webhook_events.c.seq)
        return list(connection.execute(query).scalars())


def test_paging_returns_every_event_once_in_order_and_the_cursor_rests(
    feed_client: TestClient[Litestar], engine: Engine
) -> None:
    first = event("patient.created", patient("PAT1"))
    post_event(feed_client, first)
    post_event(feed_client, first)  # a redelivery: stored once, so in the feed once
    post_events(feed_client, 14)
    store_reconcile_events(engine, 3)
    stored = all_seqs(engine)
    assert len(stored) == 18

    events, cursor = read_until(feed_client, "0", len(stored), limit=4)
    assert [item["seq"] for item in events] == stored
    head = events[0]
    assert head["payload"] == first
    assert {k: head[k] for k in ("source", "event_type", "event_id", "resource", "record_id")} == {
        "source": "webhook",
        "event_type": "patient.created",
        "event_id": first["id"],
        "resource": "patient",
        "record_id": "PAT1",
    }
    assert (head["status"], head["effect"]) == ("applied", "created")
    assert head["event_timestamp"] == first["timestamp"]
    assert head["version"]
    assert datetime.fromisoformat(head["received_at"]).tzinfo is not None
    assert [item["source"] for item in events[-3:]] == [EventSource.RECONCILE] * 3

    # Nothing new: the same cursor comes back, with nothing, however often one asks.
    for _ in range(2):
        page = get_feed(feed_client, after=cursor).json()["data"]
        assert (page["events"], page["next_cursor"], page["has_more"]) == ([], cursor, False)
    later = post_event(feed_client, event("patient.deleted", {"patient_id": "PAT1"}))
    assert [item["seq"] for item in read_until(feed_client, cursor, 1)[0]] == [later]


def test_default_limit_is_100_and_has_more_says_when_to_read_again(
    feed_client: TestClient[Litestar], engine: Engine
) -> None:
    store_reconcile_events(engine, 101)
    events, _ = read_until(feed_client, "0", 101)
    assert len(events) == 101
    page = get_feed(feed_client).json()["data"]
    assert (len(page["events"]), page["has_more"]) == (100, True)


def test_type_filter_returns_only_those_types_and_the_cursor_moves_past_the_rest(
    feed_client: TestClient[Litestar], engine: Engine
) -> None:
    seqs = post_events(feed_client, 12)  # every fourth is an appointment.created
    wanted = seqs[2::4]
    events, cursor = read_until(feed_client, "0", len(wanted), limit=2, type="appointment.created")
    assert [item["seq"] for item in events] == wanted
    assert {item["event_type"] for item in events} == {"appointment.created"}
    # Past the filtered-out events too: an unfiltered read from here starts after all twelve.
    assert get_feed(feed_client, after=cursor).json()["data"]["events"] == []
    both, _ = read_until(feed_client, "0", 6, type="patient.created,invoice.paid")
    assert [item["seq"] for item in both] == sorted(seqs[0::4] + seqs[3::4])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"after": "not-a-cursor"}, "cursor"),
        ({"after": "12.x"}, "cursor"),
        ({"after": "0.424242"}, "unknown cursor"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
    ],
)
def test_bad_cursors_and_limits_get_400_in_the_envelope(
    feed_client: TestClient[Litestar], params: dict[str, str], message: str
) -> None:
    post_events(feed_client, 1)
    response = get_feed(feed_client, **params)
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == "INVALID_REQUEST"
    assert message in body["error"]["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer "},
    ],
)
def test_missing_or_wrong_token_gets_401(
    feed_client: TestClient[Litestar], headers: dict[str, str]
) -> None:
    post_events(feed_client, 1)
    response = get_feed(feed_client, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHORIZED"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in response.text
    assert get_feed(feed_client).status_code == 200  # the right one works


@pytest.mark.parametrize("admin_token", [None, "", " ", " \t\n "])
def test_without_a_bootstrap_token_only_named_tokens_get_in(
    database_url: str, engine: Engine, admin_token: str | None
) -> None:
    settings = make_settings(database_url, admin_token=admin_token)
    with TestClient(create_app(settings)) as client:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
            response = get_feed(client, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "UNAUTHORIZED"


def test_a_blank_admin_token_is_warned_of_at_start(
    database_url: str, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING),
        TestClient(create_app(make_settings(database_url, admin_token="  "))),
    ):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("HEALTHDOCK_ADMIN_TOKEN is blank" in message for message in warnings), warnings


def test_a_configured_admin_token_is_not_warned_of(
    database_url: str, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING),
        TestClient(create_app(make_settings(database_url, admin_token=TOKEN))),
    ):
        pass
    assert not [r for r in caplog.records if "HEALTHDOCK_ADMIN_TOKEN" in r.getMessage()]
    assert TOKEN not in caplog.text


def test_a_bad_parameter_is_named_with_its_rule_and_no_value_is_echoed(
    feed_client: TestClient[Litestar],
) -> None:
    """A query value could be anything a client typed (a patient's name): never repeated.
    (Markers, not patient values: the test client logs the URL.)"""
    typed = {"after": "typed-cursor-7f3a", "type": "typed-type-c41d", "extra": "typed-extra-99e0"}
    rules = {"ten": "Expected `int`", "5000": "<= 1000", "0": ">= 1"}
    for value, rule in rules.items():
        response = feed_client.get("/events", params={**typed, "limit": value}, headers=AUTH)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "INVALID_REQUEST"
        assert error["message"].startswith("query parameter limit: "), error["message"]
        assert rule in error["message"]
        assert error["details"]["parameters"][0]["parameter"] == "limit"
        for echoed in ("typed-", "?", f"={value}"):
            assert echoed not in response.text, echoed


def test_changes_a_reconcile_found_are_in_the_feed(
    feed_client: TestClient[Litestar], engine: Engine
) -> None:
    upstream = Upstream(
        FakeHealthDock(
            seed=11, patients=30, appointments_per_patient=0, api_key=API_KEY, rate_limit=None
        )
    )

    async def run_pass() -> None:
        async with upstream.client() as client:
            result = await reconcile(engine, client, Resource.PATIENT, PassOptions(page_size=7))
            assert result.outcome == "success", result.error

    asyncio.run(run_pass())
    truth = {str(record["id"]): record for record in upstream.records(Resource.PATIENT)}
    events, _ = read_until(feed_client, "0", len(truth), limit=9)
    assert {item["source"] for item in events} == {EventSource.RECONCILE}
    assert {item["event_type"] for item in events} == {"patient.created"}
    assert {item["record_id"]: item["payload"]["data"] for item in events} == truth


def test_no_event_is_skipped_or_repeated_under_concurrent_writers(postgres_url: str) -> None:
    """Webhook batches from four threads, a slow writer and a reconcile pass write at once
    (PostgreSQL: seq order is not commit order) while a consumer polls from the start with a
    small limit."""
    from mirror.database import create_mirror_engine
    from mirror.migrate import upgrade

    engine = create_mirror_engine(postgres_url, timeout_seconds=10.0)
    upgrade(engine)
    upstream = Upstream(
        FakeHealthDock(
            seed=5, patients=120, appointments_per_patient=0, api_key=API_KEY, rate_limit=None
        )
    )

    def webhooks(writer: int) -> int:
        stored = 0
        for batch in range(30):
            items = [
                _incoming(event("patient.updated", patient(f"PAT{writer}-{batch}-{n}")))
                for n in range(1 + (writer + batch) % 5)
            ]
            stored += sum(receipt.seq is not None for receipt in ingest(engine, items))
        return stored

    def slow_writer() -> int:
        # A transaction that stays open a moment after taking its seq, as a busy one would:
        # others commit higher seqs meanwhile, so a seq-ordered feed would skip this one.
        def store_then_linger(connection: Connection) -> int:
            item = _incoming(event("patient.updated", patient(f"PATSLOW{next(_numbers)}")))
            store_events(connection, [(item, Outcome(EventStatus.APPLIED, "updated"))])
            connection.execute(text("SELECT pg_sleep(0.02)"))
            return 1

        return sum(write_transaction(engine, store_then_linger) for _ in range(40))

    def reconcile_pass() -> int:
        async def go() -> int:
            async with upstream.client() as client:
                options = PassOptions(page_size=10, concurrency=2)
                result = await reconcile(engine, client, Resource.PATIENT, options)
                # Webhook records written before the pass began are not upstream: deleted.
                return result.created + result.updated + result.tombstoned

        return asyncio.run(go())

    settings = make_settings(postgres_url, admin_token=TOKEN)
    try:
        with TestClient(create_app(settings)) as client, ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(webhooks, writer) for writer in range(4)]
            futures.append(pool.submit(slow_writer))
            futures.append(pool.submit(reconcile_pass))
            seen: list[int] = []
            cursor = "0"
            while not all(future.done() for future in futures):
                page = get_feed(client, after=cursor, limit=7).json()["data"]
                seen += [item["seq"] for item in page["events"]]
                cursor = page["next_cursor"]
            written = sum(future.result() for future in futures)
            stored = all_seqs(engine)
            assert written == len(stored) > 200
            rest, _ = read_until(client, cursor, len(stored) - len(seen), limit=7)
            seen += [item["seq"] for item in rest]
        assert len(seen) == len(set(seen)), "an event came twice"
        assert sorted(seen) == stored, "an event was skipped"
    finally:
        engine.dispose()


def _incoming(document: dict[str, Any]) -> IncomingEvent:
    body = encode(document)
    return IncomingEvent(
        EventSource.WEBHOOK,
        f"id:{document['id']}",
        parse_event(document),
        body,
        [],
        datetime.now(UTC),
    )


def test_example_consumer_catches_up_after_downtime(
    feed_client: TestClient[Litestar], engine: Engine, tmp_path: Path
) -> None:
    cursor_file = tmp_path / "feed-cursor.txt"
    feed_client.headers.update(AUTH)
    handled: list[int] = []

    def handle(item: dict[str, Any]) -> None:
        handled.append(item["seq"])

    def consume_until(count: int) -> None:
        deadline = time.monotonic() + 60
        while len(handled) < count:
            catch_up(feed_client, cursor_file, handle, limit=3)
            assert time.monotonic() < deadline, f"caught up {len(handled)} of {count}"

    first = post_events(feed_client, 5)
    consume_until(5)
    assert handled == first
    assert load_cursor(cursor_file) != "0"

    # Down: nothing reads while webhooks and a reconcile keep writing.
    missed = post_events(feed_client, 4) + store_reconcile_events(engine, 2)

    # Back: a fresh start from the saved cursor hands over exactly what was missed.
    handled.clear()
    consume_until(6)
    assert handled == missed
    assert catch_up(feed_client, cursor_file, handle) == 0


def test_example_consumer_hands_a_page_over_again_after_a_crash(
    feed_client: TestClient[Litestar], tmp_path: Path
) -> None:
    cursor_file = tmp_path / "feed-cursor.txt"
    feed_client.headers.update(AUTH)
    seqs = post_events(feed_client, 3)
    handled: list[int] = []

    def crash_on_second(item: dict[str, Any]) -> None:
        handled.append(item["seq"])
        if len(handled) == 2:
            raise RuntimeError("consumer died")

    read_until(feed_client, "0", 3)  # PostgreSQL: the feed shows them once their writers ended
    with pytest.raises(RuntimeError):
        catch_up(feed_client, cursor_file, crash_on_second, limit=10)
    # The page was not acknowledged, so the next run starts again at its beginning.
    again: list[int] = []
    catch_up(feed_client, cursor_file, lambda item: again.append(item["seq"]), limit=10)
    assert handled == seqs[:2]
    assert again == seqs
