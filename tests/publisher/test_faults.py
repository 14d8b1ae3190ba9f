"""The publisher through faults, against real nats-servers, on SQLite and PostgreSQL: NATS
down at the start, NATS killed and restarted mid-stream (its JetStream store kept), the
publisher SIGKILLed between JetStream's acknowledgement and the cursor's commit, the database
refusing the cursor's commit, and two publishers on one stream, the holder of the lease
killed. After each, every event of the feed is in the stream exactly once, in feed order (on
each subject too), nothing skipped, and the cursor stands at the feed's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import Connection

from config import Settings
from mirror import ingest, leases, read_transaction
from mirror.database import create_mirror_engine, sqlite_file
from mirror.feed import START_CURSOR, Position, encode_cursor
from mirror.publications import publication
from mirror.schema import webhook_events
from publisher import CURSOR_HEADER, Publisher, publication_name, subject_for
from tests import factories
from tests.publisher.conftest import Feed, NatsServer
from tests.support.services import COMMAND, Service, environment, service
from tests.support.stored_events import incoming

MSG_ID = "Nats-Msg-Id"
# Event types of two resources, so that the stream has several subjects.
KINDS = ("patient.created", "appointment.created", "patient.updated", "appointment.cancelled")
# A publisher's stop returns within this (it may be waiting for acknowledgements).
STOP_SECONDS = 15.0
_numbers = itertools.count(1)


# --- the event log --------------------------------------------------------------------------


def add_events(engine: Engine, count: int) -> None:
    """``count`` new events (new records, new event ids: none is deduplicated), one ingest."""
    batch = []
    for _ in range(count):
        n = next(_numbers)
        kind = KINDS[n % len(KINDS)]
        data = (
            factories.patient(f"PF{n:07d}")
            if kind.startswith("patient")
            else factories.appointment(f"AF{n:07d}", patient_id=f"PF{n:07d}")
        )
        batch.append(incoming(factories.event(kind, data)))
    ingest(engine, batch)


@dataclass(frozen=True)
class LoggedEvent:
    seq: int
    event_type: str
    cursor: str  # the feed cursor just after it


def feed_order(engine: Engine) -> list[LoggedEvent]:
    """Every event of the log in feed order: (txid, seq) on PostgreSQL, seq on SQLite."""
    columns = webhook_events.c
    query = select(columns.seq, columns.txid, columns.event_type).order_by(
        func.coalesce(columns.txid, 0), columns.seq
    )
    rows = read_transaction(engine, lambda connection: connection.execute(query).all())
    return [
        LoggedEvent(row.seq, row.event_type, encode_cursor(Position(row.txid or 0, row.seq)))
        for row in rows
    ]


def stored_cursor(engine: Engine, settings: Settings) -> str:
    name = publication_name(settings)
    return read_transaction(engine, functools.partial(publication, name=name)).cursor


def lease_holder(engine: Engine, settings: Settings) -> str | None:
    name = f"publisher:{settings.nats_stream}"
    return read_transaction(engine, functools.partial(leases.lease_holder, name=name))


def holder_pid(holder: str) -> int:
    """The process id in a publisher's lease holder (``host:pid:tag``)."""
    return int(holder.rsplit(":", 2)[1])


# --- the stream -----------------------------------------------------------------------------


def stream_count(feed: Feed) -> int | None:
    """How many messages the stream holds; None while NATS does not answer."""

    async def count() -> int:
        # nats-py's connect retries a refused connection even when told not to: bounded here.
        client = await asyncio.wait_for(
            nats.connect(feed.url, connect_timeout=1, allow_reconnect=False), timeout=2
        )
        try:
            try:
                info = await client.jetstream().stream_info(feed.stream)
            except nats.js.errors.NotFoundError:
                return 0
            return int(info.state.messages)
        finally:
            await client.close()

    try:
        return asyncio.run(count())
    except (nats.errors.Error, OSError, TimeoutError):
        return None


def assert_stream_is_the_feed(engine: Engine, feed: Feed, first: int | None = None) -> list[Any]:
    """The stream holds the feed's events (its ``first`` ones when given) exactly once each, in
    feed order, on each subject too, each message its event's JSON with its cursor."""
    events = feed_order(engine)
    expected = events if first is None else events[:first]
    messages = feed.messages()
    ids = [int(message.headers[MSG_ID]) for message in messages]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    assert not repeated, f"events published more than once: seqs {repeated}"
    assert ids == [event.seq for event in expected], "the stream is not the feed, in feed order"
    by_subject: dict[str, list[int]] = defaultdict(list)
    for message, msg_id in zip(messages, ids, strict=True):
        by_subject[message.subject].append(msg_id)
    expected_by_subject: dict[str, list[int]] = defaultdict(list)
    for event in expected:
        expected_by_subject[subject_for(feed.prefix, event.event_type)].append(event.seq)
    assert by_subject == expected_by_subject, "a subject's messages are not in feed order"
    for message, event in zip(messages, expected, strict=True):
        body = json.loads(message.data)
        assert (body["seq"], body["event_type"]) == (event.seq, event.event_type)
        assert message.headers[CURSOR_HEADER] == event.cursor
    return messages


def wait_all_published(
    engine: Engine, feed: Feed, settings: Settings, seconds: float = 15.0
) -> None:
    """Until every event of the log is in the stream and the cursor stands at the end; a
    stream holding more messages than the log has events fails at once."""
    deadline = time.monotonic() + seconds
    while True:
        events = feed_order(engine)
        count = stream_count(feed)
        cursor = stored_cursor(engine, settings)
        assert count is None or count <= len(events), (
            f"the stream holds {count} messages for {len(events)} events: duplicates"
        )
        if count == len(events) and cursor == events[-1].cursor:
            return
        assert time.monotonic() < deadline, (
            f"after {seconds:.0f} s, {count} of {len(events)} events are in the stream and the "
            f"cursor is {cursor}, not {events[-1].cursor}"
        )
        time.sleep(0.05)


def wait_until(probe: Callable[[], bool], what: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not probe():
        assert time.monotonic() < deadline, f"not within {seconds:.0f} s: {what}"
        time.sleep(0.05)


# --- publishers -----------------------------------------------------------------------------


@contextlib.contextmanager
def publishing(settings: Settings, engine: Engine, **options: Any) -> Iterator[Publisher]:
    """A Publisher running in a thread of its own, on an event loop of its own; on leaving,
    its stop event is set and its run must return in time, without an error."""
    publisher = Publisher(settings, engine, **options)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    failures: list[BaseException] = []

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        await publisher.run(stop)

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=run, name="publisher", daemon=True)
    thread.start()
    try:
        yield publisher
    finally:
        started = time.monotonic()
        if not loop.is_closed() and thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
        thread.join(STOP_SECONDS)
        took = time.monotonic() - started
        if thread.is_alive():  # not stopped: cancel it, then fail
            loop.call_soon_threadsafe(tasks[0].cancel)
            thread.join(STOP_SECONDS)
        if not thread.is_alive():
            loop.close()
    assert took < STOP_SECONDS, f"the publisher did not stop within {STOP_SECONDS:.0f} s"
    assert not failures, f"the publisher failed: {failures[0]!r}"


# Run with sys.executable: a publisher process (lease_seconds, mode), stopped by SIGTERM. With
# mode "die-before-commit" its cursor commit is replaced by SIGKILL: it dies right after
# JetStream acknowledged its first batch, before the cursor moves.
PUBLISHER_SCRIPT = """
import asyncio, logging, os, signal, sys

import publisher.publish
from config import Settings
from mirror.database import create_mirror_engine
from publisher import Publisher

lease_seconds, mode = float(sys.argv[1]), sys.argv[2]


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


if mode == "die-before-commit":
    publisher.publish.publications.advance = die


async def main():
    settings = Settings(_env_file=None)
    engine = create_mirror_engine(
        settings.database_url, timeout_seconds=settings.database_timeout_seconds
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await Publisher(settings, engine, lease_seconds=lease_seconds).run(stop)


logging.basicConfig(level=logging.INFO)
asyncio.run(main())
"""


def publisher_process(
    tmp_path: Path, env: dict[str, str], name: str, lease_seconds: float, mode: str = "run"
) -> contextlib.AbstractContextManager[Service]:
    script = tmp_path / "run_publisher.py"
    script.write_text(PUBLISHER_SCRIPT)
    return service(
        [str(lease_seconds), mode], env, tmp_path / f"{name}.log",
        command=(sys.executable, str(script)),
    )  # fmt: skip


def publisher_env(database_url: str, feed: Feed, **settings: object) -> dict[str, str]:
    return {**environment(database_url, **settings), **feed.env()}


# --- the faults -----------------------------------------------------------------------------


def test_nats_down_at_the_start(
    nats_server: NatsServer, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    """``healthdock-mirror publish`` started while NATS is down keeps trying; once NATS is up,
    every event that came meanwhile arrives, once, in order, and so do later ones."""
    feed = nats_server.feed()
    settings = feed.settings(database_url)
    add_events(engine, 5)
    env = publisher_env(database_url, feed)
    with service(["publish"], env, tmp_path / "publish.log") as publish:
        wait_until(
            lambda: "ConnectionRefusedError" in publish.output(),
            "the publisher tried to reach NATS and was refused",
        )
        assert publish.process.poll() is None, publish.output()[-2000:]
        add_events(engine, 5)
        assert stored_cursor(engine, settings) == START_CURSOR
        nats_server.start()
        wait_all_published(engine, feed, settings)
        add_events(engine, 5)
        wait_all_published(engine, feed, settings)
        publish.stop()
        assert publish.process.returncode == 0, publish.output()[-2000:]
    assert len(assert_stream_is_the_feed(engine, feed)) == 15
    assert lease_holder(engine, settings) is None, "the lease was not released on stopping"


def test_a_publisher_waiting_for_nats_stops_when_asked(
    nats_server: NatsServer, database_url: str, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopping (SIGTERM to ``healthdock-mirror publish``, a receiver shutting down) while
    NATS is down returns promptly."""
    settings = nats_server.feed().settings(database_url)

    async def stops_in_time() -> bool:
        stop = asyncio.Event()
        task = asyncio.create_task(Publisher(settings, engine).run(stop))
        deadline = time.monotonic() + 10
        while "ConnectionRefusedError" not in caplog.text:
            if time.monotonic() > deadline:
                pytest.fail("the publisher never tried to reach NATS")  # not the bug: fails
            await asyncio.sleep(0.05)
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=3)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return bool(done)

    assert asyncio.run(stops_in_time()), "the publisher did not stop within 3 s of being asked"


def test_nats_killed_and_restarted_mid_stream(
    nats_server: NatsServer, database_url: str, engine: Engine
) -> None:
    """Events keep coming while nats-server is SIGKILLed and started again on its store,
    twice: in the end the stream is the feed, each event once, in order, no gap."""
    nats_server.start()
    feed = nats_server.feed()
    settings = feed.settings(database_url)
    added = [0]
    adding = threading.Event()
    failures: list[BaseException] = []

    def keep_adding() -> None:
        try:
            while not adding.wait(0.03):
                add_events(engine, 3)
                added[0] += 3
        except BaseException as error:
            failures.append(error)

    adder = threading.Thread(target=keep_adding, name="adder", daemon=True)
    with publishing(settings, engine):
        adder.start()
        try:
            for _restart in range(2):
                before = stream_count(feed) or 0
                wait_until(
                    lambda before=before: (stream_count(feed) or 0) >= before + 15,
                    "the publisher publishes while events come",
                )
                nats_server.kill()
                while_down = added[0]
                wait_until(
                    lambda while_down=while_down: added[0] >= while_down + 9,
                    "events come in while NATS is down",
                )
                nats_server.start()
            after = stream_count(feed) or 0
            wait_until(
                lambda: (stream_count(feed) or 0) >= after + 15,
                "the publisher publishes again after NATS restarted",
            )
        finally:
            adding.set()
            adder.join(30)
        assert not failures, f"adding events failed: {failures[0]!r}"
        wait_all_published(engine, feed, settings)
    messages = assert_stream_is_the_feed(engine, feed)
    assert len(messages) == added[0] >= 45
    assert [message.seq for message in messages] == list(range(1, len(messages) + 1))


def test_sigkill_between_publish_and_cursor_commit(
    feed: Feed, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    """A publisher killed after JetStream acknowledged its first batch, before the cursor's
    commit: the batch is in the stream, the cursor has not moved. The next publisher sends
    nothing twice, skips nothing, and moves the cursor to the end."""
    settings = feed.settings(database_url)
    for _ in range(3):
        add_events(engine, 4)
    env = publisher_env(database_url, feed, nats_batch=5)
    with publisher_process(tmp_path, env, "dying", 2.0, "die-before-commit") as dying:
        dying.process.wait(timeout=30)
        assert dying.process.returncode == -signal.SIGKILL, dying.output()[-2000:]
    # The batch reached JetStream (and the next one may have: the publisher sends a batch
    # while the previous one's cursor commits); the cursor stayed where it was.
    sent = len(feed.messages())
    assert sent in (5, 10), f"{sent} events in the stream: not one or two whole batches"
    first = assert_stream_is_the_feed(engine, feed, first=sent)
    assert stored_cursor(engine, settings) == START_CURSOR

    # JetStream's id check: a second copy of a stored event adds nothing.
    async def publish_again() -> Any:
        client = await nats.connect(feed.url, connect_timeout=2, max_reconnect_attempts=0)
        try:
            return await client.jetstream().publish(
                first[0].subject, b"a second copy", headers={MSG_ID: first[0].headers[MSG_ID]}
            )
        finally:
            await client.close()

    ack = asyncio.run(publish_again())
    assert (ack.duplicate, ack.stream, ack.seq) == (True, feed.stream, first[0].seq)
    assert [m.data for m in feed.messages()] == [m.data for m in first]

    wait_until(lambda: lease_holder(engine, settings) is None, "the dead holder's lease lapses")
    with service(["publish"], env, tmp_path / "publish.log", command=COMMAND) as publish:
        wait_all_published(engine, feed, settings)
        publish.stop()
        assert publish.process.returncode == 0, publish.output()[-2000:]
    assert len(assert_stream_is_the_feed(engine, feed)) == 12
    assert stored_cursor(engine, settings) == feed_order(engine)[-1].cursor


@contextlib.contextmanager
def cursor_table_locked(database_url: str, settings: Settings) -> Iterator[Callable[[], str]]:
    """Another connection holds the lock every cursor commit needs (SQLite: the database's
    write lock; PostgreSQL: ``feed_publications``); yields a reader of the stored cursor
    through that connection."""
    name = publication_name(settings)
    path = sqlite_file(database_url)
    if path is not None:
        holder = sqlite3.connect(path, timeout=10, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")

            def read_sqlite() -> str:
                row = holder.execute(
                    "SELECT cursor FROM feed_publications WHERE name = ?", (name,)
                ).fetchone()
                return START_CURSOR if row is None else str(row[0])

            yield read_sqlite
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        return
    locking = create_mirror_engine(database_url, timeout_seconds=10)
    try:
        with locking.connect() as connection, connection.begin():
            connection.exec_driver_sql("LOCK TABLE feed_publications IN ACCESS EXCLUSIVE MODE")

            def read_postgres(connection: Connection = connection) -> str:
                return publication(connection, name).cursor

            yield read_postgres
    finally:
        locking.dispose()


def test_database_refusing_the_cursor_commit(
    feed: Feed, database_url: str, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """While the cursor's commit times out (another connection holds the lock), one batch
    reaches the stream and the publisher goes no further, its cursor kept; once the lock is
    gone it goes on without publishing anything twice, and the cursor reaches the end."""
    batch = 4
    settings = feed.settings(database_url, database_timeout_seconds=1.0, nats_batch=batch)
    publisher_engine = create_mirror_engine(
        database_url, timeout_seconds=settings.database_timeout_seconds
    )
    sqlite = sqlite_file(database_url) is not None
    try:
        with publishing(settings, publisher_engine) as publisher:
            add_events(engine, 10)
            wait_all_published(engine, feed, settings)
            # Added just before the lock (SQLite's allows no writer): ten batches, more than
            # the publisher can send before the lock is taken, whenever it wakes up.
            add_events(engine, 40)
            with cursor_table_locked(database_url, settings) as locked_cursor:
                locked_at = time.monotonic()
                # What the publisher committed before the lock came (a batch, or none).
                before = locked_cursor()
                sent = [event.cursor for event in feed_order(engine)].index(before) + 1
                if not sqlite:
                    # PostgreSQL takes more meanwhile. The lock gave its transaction an id,
                    # which holds back the feed's horizon: these are fed only once it ends.
                    add_events(engine, 10)
                wait_until(
                    lambda: (stream_count(feed) or 0) >= sent + batch,
                    "the next batch reaches the stream",
                )
                wait_until(
                    lambda: "DatabaseUnavailable" in caplog.text,
                    "the publisher's commit fails with DatabaseUnavailable",
                )
                wait_until(lambda: time.monotonic() - locked_at >= 3.0, "three seconds pass")
                assert locked_cursor() == before, "the cursor moved while its table was locked"
                # The batch whose commit failed, and the one sent while it was committing.
                assert stream_count(feed) in (sent + batch, sent + 2 * batch), (
                    "more than two batches past the cursor"
                )
            add_events(engine, 10)
            wait_all_published(engine, feed, settings)
        assert publisher.stats.realigned >= 1
    finally:
        publisher_engine.dispose()
    assert len(assert_stream_is_the_feed(engine, feed)) == (60 if sqlite else 70)
    assert stored_cursor(engine, settings) == feed_order(engine)[-1].cursor


def test_one_publisher_at_a_time_and_takeover(
    feed: Feed, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    """Two publisher processes on one database and stream: every event once. The lease's
    holder SIGKILLed, the other takes over once the lease lapses and publishes what came
    after, still each event once."""
    settings = feed.settings(database_url)
    env = publisher_env(database_url, feed, nats_batch=8)
    add_events(engine, 20)
    with (
        publisher_process(tmp_path, env, "first", 2.0) as first,
        publisher_process(tmp_path, env, "second", 2.0) as second,
    ):
        by_pid = {first.pid: first, second.pid: second}
        wait_all_published(engine, feed, settings, seconds=20)
        assert_stream_is_the_feed(engine, feed)
        holder = lease_holder(engine, settings)
        assert holder is not None
        holding = by_pid[holder_pid(holder)]
        (waiting,) = (process for process in by_pid.values() if process is not holding)
        assert waiting.process.poll() is None, waiting.output()[-2000:]

        add_events(engine, 20)
        holding.kill()
        assert holding.process.returncode == -signal.SIGKILL
        add_events(engine, 20)
        wait_all_published(engine, feed, settings)
        holder = lease_holder(engine, settings)
        assert holder is not None
        assert holder_pid(holder) == waiting.pid
        assert waiting.process.poll() is None, waiting.output()[-2000:]
    assert len(assert_stream_is_the_feed(engine, feed)) == 60


def test_a_frozen_holder_that_wakes_after_a_takeover_publishes_nothing_twice(
    feed: Feed, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    """The lease's holder SIGSTOPped (a long pause, a partition) while events keep coming; the
    other takes over once the lease lapses; the old holder woken (SIGCONT) with batches in
    hand: its messages follow a stream sequence that has moved on and are refused, its cursor
    commit fails the fence, and the stream stays the feed, each event once."""
    settings = feed.settings(database_url)
    env = publisher_env(database_url, feed, nats_batch=8)
    add_events(engine, 16)
    with (
        publisher_process(tmp_path, env, "first", 2.0) as first,
        publisher_process(tmp_path, env, "second", 2.0) as second,
    ):
        by_pid = {first.pid: first, second.pid: second}
        wait_all_published(engine, feed, settings, seconds=20)
        holder = lease_holder(engine, settings)
        assert holder is not None
        holding = by_pid[holder_pid(holder)]
        (waiting,) = (process for process in by_pid.values() if process is not holding)
        os.kill(holding.pid, signal.SIGSTOP)
        try:
            add_events(engine, 24)
            wait_until(
                lambda: (
                    (current := lease_holder(engine, settings)) is not None
                    and holder_pid(current) == waiting.pid
                ),
                "the other publisher takes the lease",
            )
            wait_all_published(engine, feed, settings)
        finally:
            os.kill(holding.pid, signal.SIGCONT)
        add_events(engine, 8)
        time.sleep(1.0)  # the woken one runs into the fence and the sequence it expected
        wait_all_published(engine, feed, settings)
        assert holding.process.poll() is None, holding.output()[-2000:]
    assert len(assert_stream_is_the_feed(engine, feed)) == 48


def test_an_event_larger_than_nats_takes_goes_without_its_payload(
    nats_server: NatsServer, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    """A server whose max_payload is smaller than an event: the event is published with its
    payload null (GET /events has it), the others whole; nothing stalls."""
    config = tmp_path / "nats.conf"
    config.write_text("max_payload: 8192\n")
    nats_server.config = config
    nats_server.start()
    feed = nats_server.feed()
    settings = feed.settings(database_url)
    add_events(engine, 3)
    big = incoming(
        factories.event("patient.updated", factories.patient("P-BIG", first_name="x" * 20_000))
    )
    ingest(engine, [big])
    add_events(engine, 3)
    with publishing(settings, engine):
        wait_all_published(engine, feed, settings)
    messages = assert_stream_is_the_feed(engine, feed)
    bodies = [json.loads(message.data) for message in messages]
    assert [body["payload"] is None for body in bodies] == [False] * 3 + [True] + [False] * 3
    assert bodies[3]["record_id"] == "P-BIG"
