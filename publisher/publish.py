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
    is_after,
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

    async def run(self, stop: asyncio.Event) -> None:
        """Wait for the lease, then publish; on any outage, wait and go on where JetStream
        and the cursor agree. Returns when ``stop`` is set."""
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
        await self._release()

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
        finally:
            stopping.cancel()
        if not connecting.done():
            # Stopped while NATS was still away: the connection attempts end with us.
            await _discard(connecting)
            raise _Stopped
        client = connecting.result()
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
                if not batch.events:
                    # Nothing new: look again soon, then less and less often while idle.
                    await _sleep_or_stop(stop, idle)
                    idle = min(idle * 2, IDLE_POLL_SECONDS)
                    reading = self._read(cursor)
                    continue
                idle = _IDLE_MIN_SECONDS
                acks = await self._send(js, batch, last_seq)
                reading = self._read(batch.next_cursor)  # optimistic: the batch will be acked
                acknowledged, last_seq = await self._acknowledged(acks, last_seq)
                if committing is not None:
                    await committing  # cursors move in order
                    committing = None
                if acknowledged:
                    cursor = batch.cursors[acknowledged - 1]
                    committing = asyncio.create_task(self._commit(cursor, acknowledged))
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
        for index, (event, after) in enumerate(zip(batch.events, batch.cursors, strict=True)):
            headers = {
                MSG_ID_HEADER: message_id(event),
                CURSOR_HEADER: after,
                EXPECTED_LAST_HEADER: str(last_seq + index),
            }
            pending.append(
                await js.publish_async(
                    subject_for(prefix, event.event_type), message_body(event), headers=headers
                )
            )
        return pending

    async def _acknowledged(
        self, pending: list[asyncio.Future[Any]], last_seq: int
    ) -> tuple[int, int]:
        """How many of the batch, from its start, JetStream stored; and the stream's last
        sequence after them."""
        # Acknowledgements lost with a connection never come: stop waiting for them soon after
        # a disconnect rather than at the timeout.
        disconnects, deadline = self._disconnects, time.monotonic() + ACK_TIMEOUT_SECONDS
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
            if ack.duplicate:
                break  # already in the stream: the rest must be placed after it again
            acknowledged += 1
            last_seq = ack.seq
        self.stats.refused += sum(
            1 for f in done if not f.cancelled() and f.exception() is not None
        )
        return acknowledged, last_seq

    async def _commit(self, cursor: str, published: int) -> None:
        assert self._fence is not None
        advance = functools.partial(
            publications.advance, fence=self._fence, name=self.name, cursor=cursor,
            published=published,
        )  # fmt: skip
        await asyncio.to_thread(write_transaction, self.engine, advance)
        self.stats.published += published

    async def _align(self, js: JetStreamContext) -> tuple[str, int]:
        """Where to go on: the stored cursor, or the stream's last event if it is ahead (its
        acknowledgement came, but the cursor's commit did not); and the stream's last
        sequence, which the next message must follow."""
        stored = await asyncio.to_thread(
            read_transaction, self.engine,
            functools.partial(publications.publication, name=self.name),
        )  # fmt: skip
        info = await js.stream_info(self.settings.nats_stream)
        last_seq = info.state.last_seq
        if last_seq == 0:
            return stored.cursor, 0
        try:
            message = await js.get_msg(self.settings.nats_stream, last_seq)
        except NotFoundError:
            return stored.cursor, last_seq  # expired or removed: the cursor is all we know
        ahead = (message.headers or {}).get(CURSOR_HEADER)
        if ahead is not None and is_after(ahead, stored.cursor):
            self.stats.realigned += 1
            log.warning("publisher: the stream is ahead of the stored cursor: moving the cursor "
                        "to the stream's last event (nothing is published twice)")  # fmt: skip
            published = await asyncio.to_thread(
                read_transaction, self.engine,
                functools.partial(publications.between, earlier=stored.cursor, later=ahead),
            )  # fmt: skip
            await self._commit(ahead, published)
            return ahead, last_seq
        return stored.cursor, last_seq


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
        with contextlib.suppress(asyncio.CancelledError, StreamConflict):
            await asyncio.wait_for(task, timeout=ACK_TIMEOUT_SECONDS + 5)
