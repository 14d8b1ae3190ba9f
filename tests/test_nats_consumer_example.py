"""examples/nats_consumer.py against the machine's NATS (JetStream on), on a stream of each
test's own that the real publisher fills from an event log: every event handled once, in feed
order, through restarts, crashes before the ack, lost acks and a failing handler."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from sqlalchemy import Engine

from examples.nats_consumer import (
    Event,
    Settings,
    StateAhead,
    consume_available,
    handle,
    load_position,
)
from mirror import ingest
from publisher import Publisher
from tests.factories import PATIENT_NAME, PATIENT_PHONE, appointment, event, patient
from tests.publisher.conftest import SHARED_NATS, Feed
from tests.support.patient_data import patient_data_in
from tests.support.stored_events import incoming

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "nats_consumer.py"

# The publisher reads the event log: SQLite is enough here.
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def feed() -> Iterator[Feed]:
    """The machine's NATS (JetStream on), a stream and subjects of this test's own (deleted
    afterwards)."""
    tag = uuid.uuid4().hex[:10]
    made = Feed(SHARED_NATS, f"TEST_{tag}", f"test{tag}.events")
    yield made
    made.delete()


class Crash(Exception):
    """The process dies here."""


def documents(count: int, start: int = 1) -> list[dict[str, Any]]:
    """Events of several types, each with a patient's data in its payload."""
    kinds = ("patient.created", "appointment.created", "patient.updated", "invoice.paid")
    made = []
    for number in range(start, start + count):
        kind = kinds[(number - 1) % len(kinds)]
        data = appointment(f"APT{number}") if kind.startswith("appointment") else patient()
        made.append(event(kind, {**data, "patient_id": f"PAT{number}"}))
    return made


def publish(feed: Feed, database_url: str, engine: Engine, count: int, start: int = 1) -> None:
    """``count`` events into the event log, then the real publisher until all are in the
    stream."""
    ingest(engine, [incoming(document) for document in documents(count, start)])
    asyncio.run(_publish(Publisher(feed.settings(database_url), engine), count))


async def _publish(publisher: Publisher, count: int) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))
    deadline = time.monotonic() + 5
    while publisher.stats.published < count:
        assert not task.done(), "the publisher stopped"
        assert time.monotonic() < deadline, "the publisher did not publish in time"
        await asyncio.sleep(0.02)
    stop.set()
    await task


def feed_items(feed: Feed) -> list[Event]:
    """The stream's messages as the consumer decodes them, in stream order."""
    return [json.loads(message.data) for message in feed.messages()]


def consumer(feed: Feed, **overrides: Any) -> Settings:
    return Settings(
        url=feed.url, stream=feed.stream, subject=f"{feed.prefix}.>",
        durable=f"test-{uuid.uuid4().hex[:8]}", **overrides,
    )  # fmt: skip


class Recorder:
    """A handler that keeps each event's seq; it can fail on a given seq, once."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.seqs: list[int] = []
        self.fail_on = fail_on

    def __call__(self, item: Event) -> None:
        if item["seq"] == self.fail_on:
            self.fail_on = None
            raise Crash
        self.seqs.append(item["seq"])


@contextlib.contextmanager
def acks_failing(
    monkeypatch: pytest.MonkeyPatch, *, after: int, lost: int = 1, crash: bool = False
) -> Iterator[None]:
    """After ``after`` acks, the next ``lost`` are lost on the way (``crash``: the process
    dies at the first of them instead)."""
    real = Msg.ack
    calls = [0]

    async def ack(message: Msg) -> None:
        calls[0] += 1
        if after < calls[0] <= after + lost:
            if crash:
                raise Crash
            return
        await real(message)

    with monkeypatch.context() as patched:
        patched.setattr(Msg, "ack", ack)
        yield


async def steal_one(settings: Settings) -> int:
    """Take the durable's next message and drop it: a delivery lost on the way (in a
    reconnect). Returns its stream sequence."""
    client = await nats.connect(settings.url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        js = client.jetstream()
        subscription = await js.pull_subscribe_bind(settings.durable, stream=settings.stream)
        [lost] = await subscription.fetch(1, timeout=2)
        return lost.metadata.sequence.stream
    finally:
        await client.close()


def pending_acks(settings: Settings) -> int:
    async def ask() -> int:
        client = await nats.connect(settings.url, connect_timeout=2, max_reconnect_attempts=0)
        try:
            info = await client.jetstream().consumer_info(settings.stream, settings.durable)
            return info.num_ack_pending or 0
        finally:
            await client.close()

    return asyncio.run(ask())


@SQLITE
def test_every_event_is_handled_once_in_feed_order_printing_identifiers_only(
    feed: Feed,
    database_url: str,
    engine: Engine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    publish(feed, database_url, engine, 6)
    items = feed_items(feed)
    assert len(items) == 6
    state = tmp_path / "state"
    settings = consumer(feed, batch=4)

    tally = asyncio.run(consume_available(settings, state, handle, idle=0.5))

    assert (tally.handled, tally.skipped) == (6, 0)
    printed = capsys.readouterr().out
    assert printed.splitlines() == [
        f"{item['seq']} {item['event_type']} {item['record_id']}" for item in items
    ]
    assert [item["seq"] for item in items] == sorted(item["seq"] for item in items)
    assert "invoice.paid" in printed  # <prefix>.other is taken too
    assert patient_data_in(printed) == []
    assert PATIENT_NAME[0] not in printed
    assert PATIENT_PHONE not in printed
    assert load_position(state) == len(items)  # the stream sequence of the last one

    again = asyncio.run(consume_available(settings, state, handle, idle=0.5))
    assert (again.handled, again.skipped) == (0, 0)
    assert capsys.readouterr().out == ""


@SQLITE
def test_a_restarted_consumer_goes_on_where_it_stopped(
    feed: Feed, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    publish(feed, database_url, engine, 3)
    state = tmp_path / "state"
    settings = consumer(feed)
    first = Recorder()
    asyncio.run(consume_available(settings, state, first, idle=0.5))
    publish(feed, database_url, engine, 3, start=4)
    items = feed_items(feed)
    assert first.seqs == [item["seq"] for item in items[:3]]

    # Another process: the example's main(), from the environment, stopped with Ctrl-C.
    env = {**os.environ, **feed.env(), "HEALTHDOCK_NATS_DURABLE": settings.durable}
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE), str(state)], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 8
        while load_position(state) < 6:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the example did not handle the new events"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=8)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert out.splitlines() == [
        f"{item['seq']} {item['event_type']} {item['record_id']}" for item in items[3:]
    ]
    assert patient_data_in(out + err) == []

    last = Recorder()
    tally = asyncio.run(consume_available(settings, state, last, idle=0.5))
    assert (tally.handled, last.seqs) == (0, [])


@SQLITE
def test_a_crash_after_handling_before_the_ack_handles_nothing_twice(
    feed: Feed, database_url: str, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(feed, database_url, engine, 6)
    items = feed_items(feed)
    state = tmp_path / "state"
    settings = consumer(feed, batch=4, ack_wait=1.0)
    recorder = Recorder()

    # Dies at the third ack: three handled, two acked; the fourth was given, not handled.
    with acks_failing(monkeypatch, after=2, crash=True), pytest.raises(Crash):
        asyncio.run(consume_available(settings, state, recorder, idle=0.5))
    assert recorder.seqs == [item["seq"] for item in items[:3]]
    assert load_position(state) == items[2]["seq"]
    assert pending_acks(settings) == 2

    # The next run is given the third again (from the durable's ack floor): acked, skipped.
    tally = asyncio.run(consume_available(settings, state, recorder, idle=0.5))
    assert (tally.handled, tally.skipped) == (3, 1)
    assert recorder.seqs == [item["seq"] for item in items]
    assert pending_acks(settings) == 0


@SQLITE
def test_messages_redelivered_after_their_ack_wait_are_not_handled_again(
    feed: Feed, database_url: str, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(feed, database_url, engine, 6)
    items = feed_items(feed)
    state = tmp_path / "state"
    settings = consumer(feed, batch=4, ack_wait=1.0)
    recorder = Recorder()

    # The first batch's acks are lost: JetStream hands those four over again after 1 s.
    with acks_failing(monkeypatch, after=0, lost=4):
        tally = asyncio.run(consume_available(settings, state, recorder, idle=2.5))

    assert (tally.handled, tally.skipped) == (6, 4)
    assert recorder.seqs == [item["seq"] for item in items]
    assert pending_acks(settings) == 0


@SQLITE
def test_a_failed_handle_is_tried_again_before_anything_later(
    feed: Feed, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    publish(feed, database_url, engine, 2)
    state = tmp_path / "state"
    settings = consumer(feed, batch=4, ack_wait=1.0)
    first_seq = feed_items(feed)[0]["seq"]
    recorder = Recorder(fail_on=first_seq + 1)

    with pytest.raises(Crash):
        asyncio.run(consume_available(settings, state, recorder, idle=0.5))
    assert recorder.seqs == [first_seq]
    # Newer events while the second waits for its ack wait: JetStream would hand them over
    # first; the consumer starts again from its unacked one instead.
    publish(feed, database_url, engine, 2, start=3)

    tally = asyncio.run(consume_available(settings, state, recorder, idle=0.5))
    assert (tally.handled, tally.skipped) == (3, 0)
    assert recorder.seqs == [item["seq"] for item in feed_items(feed)]


@SQLITE
def test_a_delivery_that_never_reached_the_consumer_is_not_skipped(
    feed: Feed, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    publish(feed, database_url, engine, 4)
    items = feed_items(feed)
    state = tmp_path / "state"
    settings = consumer(feed, batch=1, ack_wait=30.0)
    recorder = Recorder()
    stolen: list[int] = []

    def handler(item: Event) -> None:
        recorder(item)
        if not stolen:  # while the first is handled, the second is lost on its way
            thread = threading.Thread(
                target=lambda: stolen.append(asyncio.run(steal_one(settings)))
            )
            thread.start()
            thread.join()

    # Unacked for 30 s, it would come back long after the later ones were handled: the
    # consumer sees the gap in the consumer sequence and starts again from it instead.
    tally = asyncio.run(consume_available(settings, state, handler, idle=0.5))
    assert stolen == [items[1]["seq"]]
    assert recorder.seqs == [item["seq"] for item in items]
    assert (tally.handled, tally.skipped) == (4, 0)
    assert pending_acks(settings) == 0


@SQLITE
def test_a_state_file_past_the_end_of_the_stream_is_refused(
    feed: Feed, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    publish(feed, database_url, engine, 1)
    state = tmp_path / "state"
    state.write_text("99")
    recorder = Recorder()
    with pytest.raises(StateAhead, match="made anew"):
        asyncio.run(consume_available(consumer(feed), state, recorder, idle=0.5))
    assert recorder.seqs == []


def test_settings_come_from_the_environment() -> None:
    assert Settings.from_env({}) == Settings(
        url="nats://127.0.0.1:4222", stream="HEALTHDOCK_EVENTS", subject="healthdock.events.>",
        durable="healthdock-example",
    )  # fmt: skip
    chosen = Settings.from_env({
        "HEALTHDOCK_NATS_URL": "nats://a:4222, nats://b:4222",
        "HEALTHDOCK_NATS_STREAM": "FEED",
        "HEALTHDOCK_NATS_SUBJECT_PREFIX": "hospital.events",
        "HEALTHDOCK_NATS_DURABLE": "billing",
    })  # fmt: skip
    assert (chosen.servers, chosen.stream, chosen.subject, chosen.durable) == (
        ["nats://a:4222", "nats://b:4222"], "FEED", "hospital.events.>", "billing",
    )  # fmt: skip
    narrower = {"HEALTHDOCK_NATS_SUBJECT": "healthdock.events.patient.*"}
    assert Settings.from_env(narrower).subject == "healthdock.events.patient.*"
