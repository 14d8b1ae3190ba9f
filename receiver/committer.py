"""The committer: a child process that stores and applies batches of events.

The receiver's event loop verifies and parses; the committer owns the database. Run in one
process, both would share one core under the GIL, and the database work (SQLite's or the
driver's, fsync included) would stall request handling. As a child process it runs on another
core. One committer per receiver, one batch in flight: group commit still happens in the
receiver, which sends whatever queued while the previous batch committed.

Frames on the pipe are a 4-byte big-endian length and a msgpack payload (the framing of
``multiprocessing.connection.Connection``, which the child uses directly).

A database that stops answering (a network partition, a hung server) would hold a batch, and
every request behind it, forever: no driver timeout covers a connection that stays open and
silent. So the receiver waits for a batch's receipts only so long, then answers 503 and
replaces the committer, whose driver call may never return.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import socket
import struct
from multiprocessing.connection import Connection
from zoneinfo import ZoneInfo

from sqlalchemy.engine import make_url

from config import LogOptions, MirrorError, configure_logging, settle_after_startup
from receiver import frames

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!i")
# Children fork from a server that has already imported the mirror core: a restart is fast.
_PRELOAD = ["mirror.ingest", "mirror.events", "sqlalchemy", "psycopg"]


class CommitterUnavailable(MirrorError):
    """The batch was not committed (database unavailable, or the committer died)."""


def answer_deadline(timeout_seconds: float) -> float:
    """How long a batch may take before the database is taken for gone.

    A batch waits at most about one database timeout for a lock or a connection (SQLite's
    busy timeout, PostgreSQL's connect and lock timeouts); its own work takes milliseconds.
    Another timeout and two seconds more cover a slow disk.
    """
    return 2 * timeout_seconds + 2.0


def run_committer(
    database_url: str,
    timeout_seconds: float,
    local_timezone: ZoneInfo,
    channel: Connection,
    logging_options: LogOptions,
) -> None:
    """The child's main loop: one batch in, its receipts out, until the parent goes away."""
    from mirror import DatabaseUnavailable, create_mirror_engine, ingest

    # A process of its own: the receiver's logging setup does not reach it. The database's
    # password is masked whoever made the options.
    password = make_url(database_url).password or ""
    secrets = (*logging_options.secrets, password)
    configure_logging(dataclasses.replace(logging_options, secrets=secrets))
    # The committer writes appointments: their local dates are in the receiver's zone.
    engine = create_mirror_engine(
        database_url,
        timeout_seconds=timeout_seconds,
        local_timezone=local_timezone,
        key_lookups_only=True,  # ingest's statements alone run on it
    )
    # A child of the forkserver, not of the command line: its collector is settled here.
    settle_after_startup()
    channel.send_bytes(frames.encode_answer(frames.Ready()))
    log.info("committer started (pid %d)", os.getpid())
    try:
        while True:
            try:
                batch = frames.decode_batch(channel.recv_bytes())
            except (EOFError, OSError):
                return  # the receiver stopped or died: nothing more will come
            items = [frames.incoming_of(frame) for frame in batch]
            answer: frames.Answer
            try:
                answer = frames.Committed(
                    [frames.Receipt(r.seq, r.status, r.effect) for r in ingest(engine, items)]
                )
            except DatabaseUnavailable as error:
                answer = frames.Unavailable(str(error))
            channel.send_bytes(frames.encode_answer(answer))
    finally:
        engine.dispose()


class CommitterClient:
    """The receiver's side: start the child, send a batch, await its receipts."""

    def __init__(
        self,
        database_url: str,
        timeout_seconds: float,
        *,
        local_timezone: ZoneInfo,
        logging_options: LogOptions,
    ) -> None:
        self._database_url = database_url
        self._timeout = timeout_seconds
        self._zone = local_timezone
        self._logging = logging_options
        self._deadline = answer_deadline(timeout_seconds)
        self._process: multiprocessing.process.BaseProcess | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        ours, theirs = context.Pipe(duplex=True)
        process = context.Process(
            target=run_committer,
            args=(self._database_url, self._timeout, self._zone, theirs, self._logging),
            name="healthdock-committer",
            daemon=True,
        )
        process.start()
        theirs.close()
        self._process = process
        # Pipe(duplex=True) is a socketpair on POSIX: hand (a copy of) our end to asyncio.
        sock = socket.socket(fileno=os.dup(ours.fileno()))
        ours.close()
        self._reader, self._writer = await asyncio.open_unix_connection(sock=sock)
        ready = await asyncio.wait_for(self._receive(), timeout=60)
        if not isinstance(ready, frames.Ready):
            raise CommitterUnavailable("the committer did not start")

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
        if self._process is not None:
            process = self._process
            await asyncio.get_running_loop().run_in_executor(None, process.join, 10)
            if process.is_alive():
                process.kill()
        self._process = self._reader = self._writer = None

    @property
    def alive(self) -> bool:
        return self._writer is not None and self._process is not None and self._process.is_alive()

    async def commit(self, batch: list[frames.EventFrame]) -> list[frames.Receipt]:
        """Store and apply one batch; raises CommitterUnavailable when nothing was committed."""
        if self._writer is None:
            raise CommitterUnavailable("the committer is not running")
        payload = frames.encode_batch(batch)
        try:
            self._writer.write(_HEADER.pack(len(payload)) + payload)
            await self._writer.drain()
            # asyncio.timeout, not wait_for: no task per batch on the hot path.
            async with asyncio.timeout(self._deadline):
                answer = await self._receive()
        except TimeoutError:
            # The child is stuck in a driver call: replace it (the batch may still commit
            # later; its events were answered 503, and their redeliveries are deduplicated).
            self._abandon()
            raise CommitterUnavailable(
                f"the database did not answer within {self._deadline:.0f} s"
            ) from None
        except (OSError, ConnectionError, asyncio.IncompleteReadError) as error:
            raise CommitterUnavailable("the committer stopped") from error
        if isinstance(answer, frames.Unavailable):
            raise CommitterUnavailable(answer.reason)
        if not isinstance(answer, frames.Committed):
            raise CommitterUnavailable("the committer answered out of turn")
        return answer.receipts

    def _abandon(self) -> None:
        """Kill the child now; the intake starts a new one for the next batch."""
        if self._process is not None and self._process.is_alive():
            self._process.kill()
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def _receive(self) -> frames.Answer:
        assert self._reader is not None
        (size,) = _HEADER.unpack(await self._reader.readexactly(_HEADER.size))
        return frames.decode_answer(await self._reader.readexactly(size))
