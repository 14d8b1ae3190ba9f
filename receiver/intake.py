"""Group commit for arriving events: events that arrive together share one transaction.

A request hands its event to the intake and waits for its receipt. The intake sends whatever
has queued up (up to a batch limit) to the committer process as one batch, and answers each
request only after that batch has committed. At high load one commit (one fsync) serves many
events; at low load a batch is a single event and waits for nothing.
"""

from __future__ import annotations

import asyncio
import logging
from zoneinfo import ZoneInfo

from config import LogOptions, MirrorError
from mirror import DatabaseUnavailable, IncomingEvent, Receipt
from receiver import frames
from receiver.committer import CommitterClient, CommitterUnavailable

log = logging.getLogger(__name__)

_Pending = tuple[IncomingEvent, "asyncio.Future[Receipt]"]


class IntakeClosed(MirrorError):
    """The receiver is shutting down and takes no more events."""


class Intake:
    """Batches concurrent events and has the committer store each batch in one commit."""

    def __init__(
        self,
        database_url: str,
        *,
        timeout_seconds: float,
        local_timezone: ZoneInfo,
        max_batch: int,
        logging_options: LogOptions,
    ) -> None:
        self._committer = CommitterClient(
            database_url,
            timeout_seconds,
            local_timezone=local_timezone,
            logging_options=logging_options,
        )
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        await self._committer.start()
        self._task = asyncio.create_task(self._run(), name="intake")

    async def stop(self) -> None:
        """Commit what is queued, then stop; later submissions fail with IntakeClosed."""
        self._closed = True
        await self._queue.put(None)
        if self._task is not None:
            await self._task
        await self._committer.stop()

    async def submit(self, item: IncomingEvent) -> Receipt:
        """Store and apply one event; return once it is durably committed."""
        if self._closed:
            raise IntakeClosed
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                pending = self._queue.get_nowait()
                if pending is None:
                    stopping = True
                    break
                batch.append(pending)
            await self._commit(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            if not self._committer.alive:
                log.warning("committer is not running; restarting it")
                await self._committer.stop()
                await self._committer.start()
            receipts = await self._committer.commit([frames.frame_of(item) for item, _ in batch])
        except CommitterUnavailable as error:
            log.warning("database unavailable, %d events refused: %s", len(batch), error)
            self._fail(batch, str(error))
            return
        except Exception as error:
            # A bug must fail these requests (the sender retries), never stop the intake.
            log.error("intake batch failed with %s", type(error).__name__)
            self._fail(batch, "event could not be stored")
            return
        for (_, future), receipt in zip(batch, receipts, strict=True):
            if not future.done():
                future.set_result(Receipt(receipt.seq, receipt.status, receipt.effect))

    @staticmethod
    def _fail(batch: list[_Pending], reason: str) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(DatabaseUnavailable(reason))
