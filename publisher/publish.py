"""The publisher: follows the change feed and publishes each event to JetStream, once, in feed
order, moving its cursor only after JetStream acknowledged.

Exactly once, in order, without a gap, through crashes of either side:

- **Order and no gap.** Messages go out pipelined (``publish_async``), each with
  ``Nats-Expected-Last-Sequence``: the stream's sequence it must follow. JetStream stores a
  message only right after its predecessor, so if one is lost (NATS restarted mid-batch), every
  later one of the batch is refused rather than stored out of order or past a hole.
- **No duplicate.** Each message carries the event's stable id as ``Nats-Msg-Id`` (JetStream
  drops a second copy within the duplicate window) and the feed cursor just after its event
  (``Healthdock-Feed-Cursor``). Before publishing, and after any failure, the publisher reads
  the stream's last message: if the stream is ahead of the stored cursor (the process died
  between JetStream's acknowledgement and the cursor's commit, or the database refused the
  commit), the cursor moves up to it, so nothing is sent again however long the outage was.
- **Nothing skipped.** The cursor moves only over events whose acknowledgement came back, in
  its own transaction, fenced by the publisher's lease.

One publisher at a time across every process sharing the database: it holds the lease
``publisher:<stream>`` (``mirror.leases``) and renews it between batches; the others wait
for it. Events are logged by count and cursor only, never their content.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import Engine

from config import Settings
from mirror import (
    DatabaseUnavailable,
    FeedBatch,
    FeedEvent,
    cursor_after,
    is_after,
    is_issued,
    leases,
    publications,
    read_batch,
    read_transaction,
    write_transaction,
)
from publisher.stream import StreamConflict, ensure_stream, subject_for

log = logging.getLogger(__name__)

CURSOR_HEADER = "Healthdock-Feed-Cursor"
MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_LAST_HEADER = "Nats-Expected-Last-Sequence"
LEASE_SECONDS = 30.0
ACK_TIMEOUT_SECONDS = 10.0
IDLE_POLL_SECONDS = 0.2  # the longest wait between looks at an idle feed
_HEADER_ROOM = 1024  # what the headers and the protocol take of a message's max_payload
_LOOK_BACK = 64  # messages read back from the stream's end for the newest cursor
_IDLE_MIN_SECONDS = 0.005  # the first wait after the feed ran dry
_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)

_encoder = msgspec.json.Encoder()


def publication_name(settings: Settings) -> str:
    return f"nats:{settings.nats_stream}"


def message_id(event: FeedEvent) -> str:
    """The event's stable id: its place in the event log, which never changes."""
    return str(event.seq)


def message_body(event: FeedEvent) -> bytes:
    """The feed item's JSON, as ``GET /events`` serves it."""
    return _encoder.encode(event)


class _Stopped(Exception):
    """Told to stop before the publisher got going."""


@dataclass(slots=True)
class PublisherStats:
    published: int = 0  # acknowledged by JetStream, cursor moved
    batches: int = 0
    realigned: int = 0  # times the stream was found ahead of the cursor (a crash, a refusal)
    refused: int = 0  # messages JetStream refused (out of sequence after a loss)


class Publisher:
    """Publishes the feed of ``engine`` to the stream of ``settings`` until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        connect: Callable[..., Awaitable[NATS]] = nats.connect,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.name = publication_name(settings)
        self.stats = PublisherStats()
        self._connect = connect
        self._lease_seconds = lease_seconds
        self._holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lease = f"publisher:{settings.nats_stream}"
        self._fence: leases.Fence | None = None
        self._renewed_at = 0.0
        self._disconnects = 0  # seen by a batch waiting for its acknowledgements
        self._quiet_until = 0.0
        self._max_payload = 1024 * 1024  # the server's, once connected

    async def run(self, stop: asyncio.Event) -> None:
        """Wait for the lease, then publish; on any outage, wait and go on where JetStream
        and the cursor agree. Returns when ``stop`` is set."""
        try:
            await self._publish_until(stop)
        finally:
            await self._release()

    async def _publish_until(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            batches = self.stats.batches
            try:
                if await self._hold_lease(stop):
                    async with self._connected(stop) as js:
                        await self._publish(js, stop)
            except StreamConflict:
                raise  # configuration: retrying cannot help
            except _Stopped:
                break
            except leases.LeaseLost as lost:
                log.warning("publisher: %s; waiting to take it again", lost)
                self._fence = None
            except (DatabaseUnavailable, NatsError, OSError, TimeoutError) as error:
                # Longer waits while nothing goes through; from the start once something did.
                failures = 1 if self.stats.batches > batches else failures + 1
                log.warning("publisher: %s; trying again", type(error).__name__)
            await _sleep_or_stop(stop, _RETRY_SECONDS[min(failures, len(_RETRY_SECONDS) - 1)])

    # --- the lease -------------------------------------------------------------------------

    async def _hold_lease(self, stop: asyncio.Event) -> bool:
        """Take the lease (or keep it); False while another process holds it."""
        if self._fence is not None:
            await self._renew()
            return True
        take = functools.partial(
            leases.take_lease, name=self._lease, holder=self._holder,
            ttl_seconds=self._lease_seconds,
        )  # fmt: skip
        fence = await asyncio.to_thread(write_transaction, self.engine, take)
        if fence is None:
            await _sleep_or_stop(stop, self._lease_seconds / 3)
            return False
        log.info("publisher: took the %s lease", self._lease)
        self._fence, self._renewed_at = fence, time.monotonic()
        register = functools.partial(publications.register, name=self.name)
        await asyncio.to_thread(write_transaction, self.engine, register)
        return True

    async def _renew(self) -> None:
        """Renew when a third of the lease has passed; raises LeaseLost if it lapsed."""
        if self._fence is None or time.monotonic() - self._renewed_at < self._lease_seconds / 3:
            return
        renew = functools.partial(
            leases.renew_lease, fence=self._fence, ttl_seconds=self._lease_seconds
        )
        if not await asyncio.to_thread(write_transaction, self.engine, renew):
            raise leases.LeaseLost(f"the {self._lease} lease lapsed before it was renewed")
        self._renewed_at = time.monotonic()

    async def _release(self) -> None:
        if self._fence is None:
            return
        release = functools.partial(leases.release_lease, name=self._lease, holder=self._holder)
        with contextlib.suppress(DatabaseUnavailable):
            await asyncio.to_thread(write_transaction, self.engine, release)
        self._fence = None

    # --- NATS ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connected(self, stop: asyncio.Event) -> AsyncIterator[JetStreamContext]:
        closing = False

        async def disconnected() -> None:
            self._disconnects += 1
            if not closing:
                log.warning("publisher: disconnected from NATS; reconnecting")

        async def reconnected() -> None:
            self._quiet_until = 0.0
            log.info("publisher: reconnected to NATS")

        async def error(problem: Exception) -> None:
            # Every attempt while NATS is away fails: say so once, then once a minute.
            if time.monotonic() >= self._quiet_until:
                self._quiet_until = time.monotonic() + 60
                log.warning("publisher: NATS: %s (trying again)", type(problem).__name__)

        connecting = asyncio.ensure_future(self._connect(
            servers=self.settings.nats_servers, name="healthdock-mirror publisher",
            connect_timeout=2, allow_reconnect=True, max_reconnect_attempts=-1,
            reconnect_time_wait=0.5, disconnected_cb=disconnected, reconnected_cb=reconnected,
            error_cb=error,
        ))  # fmt: skip
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await _discard(connecting)  # cancelled from outside: the attempts end with us
            raise
        finally:
            stopping.cancel()
        if not connecting.done():
            # Stopped while NATS was still away: the connection attempts end with us.
            await _discard(connecting)
            raise _Stopped
        client = connecting.result()
        self._max_payload = client.max_payload
        try:
            js = client.jetstream(publish_async_max_pending=2 * self.settings.nats_batch)
            await ensure_stream(
                js, self.settings.nats_stream, self.settings.nats_subject_prefix,
                self.settings.nats_max_age_days,
            )  # fmt: skip
            yield js
        finally:
            closing = True
            with contextlib.suppress(NatsError, OSError, TimeoutError):
                await client.close()

    # --- publishing ------------------------------------------------------------------------

    async def _publish(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        """Publish batch after batch. While a batch's acknowledgements are on their way, the
        next batch is read and the previous one's cursor committed: the broker, the database
        and this loop work at once, and the cursor still moves only over what was acked."""
        cursor, last_seq = await self._align(js)
        idle = _IDLE_MIN_SECONDS
        committing: asyncio.Task[None] | None = None
        reading = self._read(cursor)
        try:
            while not stop.is_set():
                await self._renew()
                batch = await reading
                if committing is not None and committing.done():
                    await committing  # a commit that failed says so now, not at the next batch
                    committing = None
                if not batch.events:
                    # Nothing new: look again soon, then less and less often while idle.
                    await _sleep_or_stop(stop, idle)
                    idle = min(idle * 2, IDLE_POLL_SECONDS)
                    reading = self._read(cursor)
                    continue
                idle = _IDLE_MIN_SECONDS
                disconnects = self._disconnects
                acks = await self._send(js, batch, last_seq)
                reading = self._read(batch.next_cursor)  # optimistic: the batch will be acked
                acknowledged, last_seq = await self._acknowledged(acks, last_seq, disconnects)
                if committing is not None:
                    await committing  # cursors move in order
                    committing = None
                if acknowledged:
                    cursor = batch.cursors[acknowledged - 1]
                    committing = asyncio.create_task(self._commit(cursor, acknowledged, last_seq))
                if acknowledged < len(acks):
                    log.warning("publisher: %d of %d events not acknowledged; reading the "
                                "stream again", len(acks) - acknowledged, len(acks))  # fmt: skip
                    if committing is not None:
                        await committing
                        committing = None
                    await _discard(reading)
                    cursor, last_seq = await self._align(js)
                    reading = self._read(cursor)
                    continue
                self.stats.batches += 1
        finally:
            await _discard(reading)
            if committing is not None:
                await committing

    def _read(self, cursor: str) -> asyncio.Task[FeedBatch]:
        return asyncio.create_task(
            asyncio.to_thread(read_batch, self.engine, cursor, limit=self.settings.nats_batch)
        )

    async def _send(
        self, js: JetStreamContext, batch: FeedBatch, last_seq: int
    ) -> list[asyncio.Future[Any]]:
        """Publish ``batch`` after stream sequence ``last_seq``; the acknowledgements to come."""
        prefix = self.settings.nats_subject_prefix
        pending: list[asyncio.Future[Any]] = []
        try:
            for index, (event, after) in enumerate(zip(batch.events, batch.cursors, strict=True)):
                headers = {
                    MSG_ID_HEADER: message_id(event),
                    CURSOR_HEADER: after,
                    EXPECTED_LAST_HEADER: str(last_seq + index),
                }
                body = message_body(event)
                if len(body) > self._max_payload - _HEADER_ROOM:
                    # Larger than NATS takes: the item without its payload (GET /events has it).
                    log.warning("publisher: event seq %d is larger than NATS's max_payload: "
                                "published without its payload", event.seq)  # fmt: skip
                    body = message_body(dataclasses.replace(event, payload=None))
                subject = subject_for(prefix, event.event_type)
                pending.append(await js.publish_async(subject, body, headers=headers))
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        return pending

    async def _acknowledged(
        self, pending: list[asyncio.Future[Any]], last_seq: int, disconnects: int
    ) -> tuple[int, int]:
        """How many of the batch, from its start, are in the stream; and the stream's last
        sequence after them. ``disconnects``: the count when the batch began to go out."""
        # Acknowledgements lost with a connection never come: stop waiting for them soon after
        # a disconnect rather than at the timeout.
        deadline = time.monotonic() + ACK_TIMEOUT_SECONDS
        waiting: set[asyncio.Future[Any]] = set(pending)
        while waiting and time.monotonic() < deadline and self._disconnects == disconnects:
            _, waiting = await asyncio.wait(waiting, timeout=0.25)
        if waiting and self._disconnects != disconnects:
            _, waiting = await asyncio.wait(waiting, timeout=0.5)  # what came just before it
        for future in waiting:
            future.cancel()
        done = {future for future in pending if future.done() and not future.cancelled()}
        acknowledged = 0
        for future in pending:
            if future not in done or future.cancelled() or future.exception() is not None:
                break
            ack = future.result()
            acknowledged += 1
            if ack.duplicate:
                # In the stream already (JetStream checks the id before the sequence): its
                # event counts as published; the rest of the batch, sent to follow a sequence
                # that did not grow, is refused and goes again after a realignment.
                continue
            last_seq = ack.seq
        self.stats.refused += sum(
            1 for f in done if not f.cancelled() and f.exception() is not None
        )
        return acknowledged, last_seq

    async def _commit(self, cursor: str, published: int, stream_seq: int) -> None:
        assert self._fence is not None
        advance = functools.partial(
            publications.advance, fence=self._fence, name=self.name, cursor=cursor,
            published=published, stream_seq=stream_seq,
        )  # fmt: skip
        await asyncio.to_thread(write_transaction, self.engine, advance)
        self.stats.published += published

    async def _align(self, js: JetStreamContext) -> tuple[str, int]:
        """Where to go on, and the stream's last sequence, which the next message must follow.

        The stream's newest message that carries a feed cursor says what it holds: if that is
        ahead of the stored cursor (its acknowledgement came, the cursor's commit did not), the
        cursor moves up to it. If every message is gone (expired by age, purged), the stored
        broker sequence says how many events went out after the cursor: those are skipped.
        A cursor this database never issued means the stream is another mirror's: refused."""
        stream = self.settings.nats_stream
        stored = await asyncio.to_thread(
            read_transaction, self.engine,
            functools.partial(publications.publication, name=self.name),
        )  # fmt: skip
        state = (await js.stream_info(stream)).state
        last_seq = state.last_seq
        if last_seq == 0:
            return stored.cursor, 0
        found = await _newest_cursor(js, stream, last_seq, max(1, state.first_seq or 1))
        if found is None:
            if last_seq <= stored.stream_seq:
                return stored.cursor, last_seq
            # Messages after the stored one are gone unread: they were this publisher's (only
            # it writes here, each right after the one before), so their events were sent.
            ahead = await asyncio.to_thread(
                cursor_after, self.engine, stored.cursor, last_seq - stored.stream_seq
            )
            seq = last_seq
        else:
            seq, ahead = found
            known = functools.partial(is_issued, cursor=ahead)
            if not await asyncio.to_thread(read_transaction, self.engine, known):
                raise StreamConflict(
                    f"the JetStream stream {stream} holds events this database never stored "
                    "(another mirror's, or the database was replaced): give this mirror a "
                    "stream of its own (HEALTHDOCK_NATS_STREAM, HEALTHDOCK_NATS_SUBJECT_PREFIX)"
                )
        if not is_after(ahead, stored.cursor):
            if is_after(stored.cursor, ahead):
                log.warning(
                    "publisher: the stream holds fewer events than the cursor says were "
                    "published (NATS lost stored messages?); going on from the cursor"
                )
            return stored.cursor, last_seq
        self.stats.realigned += 1
        log.warning("publisher: the stream is ahead of the stored cursor: moving the cursor to "
                    "the stream's last event (nothing is published twice)")  # fmt: skip
        published = await asyncio.to_thread(
            read_transaction, self.engine,
            functools.partial(publications.between, earlier=stored.cursor, later=ahead),
        )  # fmt: skip
        await self._commit(ahead, published, seq)
        return ahead, last_seq


async def _newest_cursor(
    js: JetStreamContext, stream: str, last_seq: int, first_seq: int
) -> tuple[int, str] | None:
    """The newest of the stream's last messages that carries a feed cursor, if any."""
    for seq in range(last_seq, max(first_seq, last_seq - _LOOK_BACK) - 1, -1):
        try:
            message = await js.get_msg(stream, seq)
        except NotFoundError:
            continue
        cursor = (message.headers or {}).get(CURSOR_HEADER)
        if cursor is not None:
            return seq, cursor
    return None


async def _discard(task: asyncio.Task[Any]) -> None:
    """A read no longer wanted: let it end, whatever it found."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


@contextlib.asynccontextmanager
async def running_publisher(settings: Settings, engine: Engine) -> AsyncIterator[None]:
    """The publisher alongside another service (serve, worker) for as long as it runs."""
    stop = asyncio.Event()
    task = asyncio.create_task(Publisher(settings, engine).run(stop), name="publisher")

    def ended(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            # A stream that is not ours (StreamConflict): say so now, not at shutdown.
            log.error("the change feed's publisher stopped: %s", done.exception())

    task.add_done_callback(ended)
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError, StreamConflict):
            await asyncio.wait_for(task, timeout=ACK_TIMEOUT_SECONDS + 5)
