"""The publisher against the machine's NATS: every feed event once, in feed order, to its
subject, as ``GET /events`` serves it; the stream created with its limits, or refused when it
is not ours; its lag in ``status`` and ``/metrics``; inside ``serve``."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import nats
import pytest
from click.testing import CliRunner
from litestar.serialization import encode_json
from sqlalchemy import Engine, text

from config import SettingsError, load_settings
from healthdock_mirror.cli import main
from mirror import gather_status, ingest, read_batch, read_feed
from publisher import (
    CURSOR_HEADER,
    Publisher,
    StreamConflict,
    ensure_stream,
    message_body,
    message_id,
    publication_name,
    subject_for,
)
from tests.factories import appointment, encode, event, patient, signed
from tests.publisher.conftest import Feed
from tests.support.services import free_port, serve
from tests.support.stored_events import incoming


def _add(engine: Engine, count: int, event_type: str = "patient.created") -> None:
    made = appointment if event_type.startswith("appointment.") else patient
    ingest(engine, [incoming(event(event_type, made(f"R{time.monotonic_ns()}-{i}")))
                    for i in range(count)])  # fmt: skip


def publish_until(feed: Feed, engine: Engine, count: int, **overrides: object) -> Publisher:
    """Run a publisher until the stream holds ``count`` messages (or 20 s passed)."""
    settings = feed.settings(str(engine.url.render_as_string(hide_password=False)), **overrides)

    async def run() -> Publisher:
        stop = asyncio.Event()
        publisher = Publisher(settings, engine)
        task = asyncio.create_task(publisher.run(stop))
        deadline = time.monotonic() + 20
        while publisher.stats.published < count and time.monotonic() < deadline:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
        stop.set()
        await task
        return publisher

    return asyncio.run(run())


def _feed_order(engine: Engine) -> list[int]:
    order = "coalesce(txid, 0), seq" if engine.dialect.name == "postgresql" else "seq"
    with engine.connect() as connection:
        return list(
            connection.execute(text(f"SELECT seq FROM webhook_events ORDER BY {order}")).scalars()
        )


def test_every_event_once_in_feed_order_as_the_feed_serves_it(feed: Feed, engine: Engine) -> None:
    _add(engine, 300)
    _add(engine, 2, event_type="invoice.paid")  # a type the mirror does not know
    _add(engine, 1, event_type="appointment.cancelled")
    publish_until(feed, engine, 303, nats_batch=64)
    messages = feed.messages()
    assert [int(m.headers["Nats-Msg-Id"]) for m in messages] == _feed_order(engine)
    served = read_feed(engine, limit=1000).events
    by_seq = {item.seq: json.loads(encode_json(item)) for item in served}
    for message in messages:
        body = json.loads(message.data)
        assert body == by_seq[body["seq"]]  # the feed item, field for field
        assert message.subject == subject_for(feed.prefix, body["event_type"])
    subjects = {m.subject for m in messages}
    assert subjects == {f"{feed.prefix}.patient.created", f"{feed.prefix}.other",
                        f"{feed.prefix}.appointment.cancelled"}  # fmt: skip
    # The stream's last message says where the feed stands: what a restart aligns on.
    assert messages[-1].headers[CURSOR_HEADER] == read_feed(engine, limit=1000).next_cursor


def test_the_cursor_moves_only_with_what_was_published_and_a_restart_goes_on(
    feed: Feed, engine: Engine
) -> None:
    _add(engine, 50)
    first = publish_until(feed, engine, 50)
    assert first.stats.published == 50
    _add(engine, 20)
    second = publish_until(feed, engine, 20)
    assert second.stats.published == 20  # only the new ones: the cursor was kept
    assert len(feed.messages()) == 70
    status = gather_status(engine)
    (lag,) = status.publishers
    assert lag.name == publication_name(feed.settings("sqlite://"))
    assert (lag.events, lag.seconds) == (0, 0.0)


def test_the_lag_shows_in_status_and_metrics(
    feed: Feed, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    _add(engine, 5)
    publish_until(feed, engine, 5)
    _add(engine, 7)  # and no publisher running
    time.sleep(1.1)
    (lag,) = gather_status(engine).publishers
    assert lag.events == 7
    assert lag.seconds >= 1.0
    with serve(database_url, tmp_path / "serve.log") as receiver:
        metrics = httpx.get(f"{receiver.base_url}/metrics").text
    name = publication_name(feed.settings(database_url))
    assert f'healthdock_publisher_lag_events{{publisher="{name}"}} 7.0' in metrics
    assert f'healthdock_publisher_lag_seconds{{publisher="{name}"}}' in metrics


def test_the_stream_is_created_with_its_limits(feed: Feed) -> None:
    async def check() -> None:
        client = await nats.connect(feed.url)
        try:
            js = client.jetstream()
            await ensure_stream(js, feed.stream, feed.prefix, max_age_days=2)
            info = await js.stream_info(feed.stream)
            assert info.config.subjects == [f"{feed.prefix}.>"]
            assert str(info.config.storage) in ("file", "StorageType.FILE")
            assert info.config.max_age == pytest.approx(2 * 86_400)
            assert info.config.duplicate_window is not None
            assert info.config.duplicate_window >= 3600  # longer than any retry
            await ensure_stream(js, feed.stream, feed.prefix, max_age_days=2)  # idempotent
        finally:
            await client.close()

    asyncio.run(check())


def test_a_stream_that_is_not_ours_is_refused_by_name(feed: Feed) -> None:
    async def check() -> None:
        client = await nats.connect(feed.url)
        try:
            js = client.jetstream()
            await js.add_stream(name=feed.stream, subjects=[f"{feed.prefix}.elsewhere"])
            with pytest.raises(StreamConflict, match="exists with subjects"):
                await ensure_stream(js, feed.stream, feed.prefix, max_age_days=1)
            # Another stream already takes the subjects: creating ours is refused.
            with pytest.raises(StreamConflict, match="HEALTHDOCK_NATS_SUBJECT_PREFIX"):
                await ensure_stream(js, feed.stream + "_2", feed.prefix, max_age_days=1)
        finally:
            await client.close()

    asyncio.run(check())


def test_serve_publishes_what_it_receives(
    feed: Feed, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    options = {name.removeprefix("HEALTHDOCK_").lower(): v for name, v in feed.env().items()}
    with serve(database_url, tmp_path / "serve.log", **options) as receiver:
        body = encode(event("patient.created", patient("PAT-SERVED")))
        answer = httpx.post(f"{receiver.base_url}/webhooks/healthdock", content=body,
                            headers=signed(body))  # fmt: skip
        assert answer.status_code == 200
        deadline = time.monotonic() + 15
        while not feed.messages():
            assert time.monotonic() < deadline, receiver.output()[-2000:]
            time.sleep(0.1)
    (message,) = feed.messages()
    assert json.loads(message.data)["record_id"] == "PAT-SERVED"


def test_publish_needs_a_nats_url(database_url: str, engine: Engine) -> None:
    result = CliRunner().invoke(main, ["publish"], env={"HEALTHDOCK_DATABASE_URL": database_url})
    assert result.exit_code == 1
    assert "HEALTHDOCK_NATS_URL: needed to publish the change feed" in result.output


@pytest.mark.parametrize(
    ("variable", "value"),
    [("HEALTHDOCK_NATS_URL", "http://127.0.0.1:4222"), ("HEALTHDOCK_NATS_URL", "nats://:4222"),
     ("HEALTHDOCK_NATS_STREAM", "has.dots"), ("HEALTHDOCK_NATS_SUBJECT_PREFIX", "a.>"),
     ("HEALTHDOCK_NATS_MAX_AGE_DAYS", "0"), ("HEALTHDOCK_NATS_BATCH", "0")],
)  # fmt: skip
def test_bad_nats_settings_are_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_nats_credentials_are_masked() -> None:
    settings = load_settings(nats_url="nats://mirror:s3cret-nats-pass@127.0.0.1:4222")
    assert "s3cret-nats-pass" in settings.secret_values
    tokened = load_settings(nats_url="nats://t0ken-of-the-mirror@127.0.0.1:4222")
    assert "t0ken-of-the-mirror" in tokened.secret_values  # token authentication
    for shown in (repr(settings), repr(tokened)):
        assert "s3cret-nats-pass" not in shown
        assert "t0ken-of-the-mirror" not in shown
        assert "***@127.0.0.1:4222" in shown


def _publish_by_hand(feed: Feed, engine: Engine, picks: list[tuple[int, bool]]) -> None:
    """Publish events of the log (by index in feed order) as the publisher would, with or
    without their cursor header, bypassing it: what a crashed or foreign publisher left."""
    batch = read_batch(engine, None, limit=1000)

    async def send() -> None:
        client = await nats.connect(feed.url)
        try:
            js = client.jetstream()
            await ensure_stream(js, feed.stream, feed.prefix, max_age_days=1)
            for index, with_cursor in picks:
                item = batch.events[index]
                headers = {"Nats-Msg-Id": message_id(item)}
                if with_cursor:
                    headers[CURSOR_HEADER] = batch.cursors[index]
                await js.publish(subject_for(feed.prefix, item.event_type), message_body(item),
                                 headers=headers)  # fmt: skip
        finally:
            await client.close()

    asyncio.run(send())


def test_events_already_in_the_stream_are_published_once_without_a_livelock(
    feed: Feed, engine: Engine
) -> None:
    """Duplicates at the batch's start (JetStream checks the id before the sequence) count as
    published: the publisher goes on instead of realigning onto them again and again."""
    _add(engine, 30)
    _publish_by_hand(feed, engine, [(1, False), (2, False), (0, True)])
    publisher = publish_until(feed, engine, 29, nats_batch=8)
    ids = [int(m.headers["Nats-Msg-Id"]) for m in feed.messages()]
    assert sorted(ids) == _feed_order(engine)  # every event once
    assert len(ids) == 30
    assert publisher.stats.realigned >= 1
    assert publisher.stats.batches < 20  # no loop on the duplicates


def test_messages_gone_from_the_stream_are_not_sent_again(feed: Feed, engine: Engine) -> None:
    """Acknowledged but never committed (a crash), then expired by age before the publisher
    came back: the stored broker sequence says they went out; they are not republished."""
    _add(engine, 10)
    publish_until(feed, engine, 10, nats_max_age_days=3 / 86_400)
    _add(engine, 6)
    _publish_by_hand(feed, engine, [(index, True) for index in range(10, 16)])
    deadline = time.monotonic() + 20
    while feed.messages():  # the stream keeps them 3 s
        assert time.monotonic() < deadline, "the messages did not expire"
        time.sleep(0.5)
    _add(engine, 4)
    publish_until(feed, engine, 4, nats_max_age_days=3 / 86_400)
    ids = [int(m.headers["Nats-Msg-Id"]) for m in feed.messages()]
    assert ids == _feed_order(engine)[16:]  # only the four new ones


def test_a_publisher_shows_its_lag_before_it_published_anything(
    database_url: str, engine: Engine
) -> None:
    _add(engine, 9)
    settings = Feed(f"nats://127.0.0.1:{free_port()}", "TEST_DOWN", "testdown.events").settings(
        database_url
    )

    async def briefly() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(Publisher(settings, engine).run(stop))
        await asyncio.sleep(1.0)  # NATS never answers
        stop.set()
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(briefly())
    (lag,) = gather_status(engine).publishers
    assert (lag.name, lag.events) == (publication_name(settings), 9)
