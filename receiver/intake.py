"""Group commit for arriving events: events that arrive together share one transaction.

A request hands its event to the intake and waits for its receipt. One writer thread takes
whatever has queued up (up to a batch limit) and stores and applies it in a single commit, so
at high load one fsync serves many events; at low load a batch is a single event and waits
for nothing. A request is answered only after its batch has committed.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine

from mirror.database import DatabaseUnavailable
from mirror.eventlog import IncomingEvent
from mirror.ingest import Receipt, ingest

log = logging.getLogger(__name__)

_Pending = tuple[IncomingEvent, "asyncio.Future[Receipt]"]


class IntakeClosed(Exception):
    """The receiver is shutting down and takes no more events."""


class Intake:
    """Batches concurrent events into shared commits on one writer thread."""

    def __init__(self, engine: Engine, *, max_batch: int) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intake")
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="intake")

    async def stop(self) -> None:
        """Commit what is queued, then stop; later submissions fail with IntakeClosed."""
        self._closed = True
        await self._queue.put(None)
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, item: IncomingEvent) -> Receipt:
        """Store and apply one event; return once it is durably committed."""
        if self._closed:
            raise IntakeClosed
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
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
            await self._commit(loop, batch)

    async def _commit(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        items = [item for item, _ in batch]
        try:
            receipts = await loop.run_in_executor(self._executor, ingest, self._engine, items)
        except DatabaseUnavailable as error:
            log.warning("database unavailable, %d events refused: %s", len(batch), error)
            for _, future in batch:
                if not future.done():
                    future.set_exception(DatabaseUnavailable(str(error)))
            return
        except Exception as error:
            # A bug must fail these requests (the sender retries), never stop the intake.
            log.error("intake batch failed with %s", type(error).__name__)
            for _, future in batch:
                if not future.done():
                    future.set_exception(DatabaseUnavailable("event could not be stored"))
            return
        for (_, future), receipt in zip(batch, receipts, strict=True):
            if not future.done():
                future.set_result(receipt)
