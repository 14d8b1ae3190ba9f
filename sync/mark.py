"""The mark phase of a reconcile pass: every page of a resource, through the ordering guard.

Pages are fetched with the largest page size, several in flight when the rate budget allows,
and every record goes through the mirror core's ordering guard, so a page read before a
webhook's newer update never overwrites it. Each listed record is marked with the pass's id
(what the sweep looks at). Pages are applied in short transactions of their own, each moving
the pass's checkpoint, so a pass that dies resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mirror import Resource, runs
from sync.client import HealthDockClient
from sync.passes import (
    PassOptions,
    PassResult,
    PassWriter,
    Progress,
    apply_listed,
    first_failure,
)

# Pages written in one transaction at most: few enough that a transaction stays short (the
# receiver shares SQLite's single writer), enough to spread a commit over many records.
_PAGES_PER_TRANSACTION = 10
_DONE = 0  # page numbers start at 1: this one tells the writer the fetchers are finished

_Fetched = tuple[int, Sequence[dict[str, Any]]]  # (page number, its records)


async def mark(
    write_pass: PassWriter,
    client: HealthDockClient,
    resource: Resource,
    options: PassOptions,
    run: runs.Run,
    result: PassResult,
    progress: Progress | None,
) -> None:
    """Apply every page of ``resource`` from the run's checkpoint on; raise what ended it
    (an ``UpstreamError`` makes the pass incomplete)."""
    state = _PageState(next_page=run.checkpoint + 1, checkpoint=run.checkpoint)
    # Fetched pages wait here for the writer; bounded, so memory stays flat however many
    # pages there are.
    fetched: asyncio.Queue[_Fetched] = asyncio.Queue(maxsize=2 * max(1, options.concurrency))

    async def fetch(number: int) -> None:
        page = await client.page(resource, number, options.page_size)
        state.saw_total(page.total_pages)
        await fetched.put((number, page.records))

    async def fetcher() -> None:
        while (number := state.take()) is not None:
            await fetch(number)

    async def writer() -> None:
        # Whatever pages are waiting go into one transaction: one commit (and one fsync) for
        # several pages, while the fetchers keep the next ones coming.
        while True:
            batch = [await fetched.get()]
            while len(batch) < _PAGES_PER_TRANSACTION and not fetched.empty():
                batch.append(fetched.get_nowait())
            if batch[-1][0] == _DONE:
                batch.pop()
                await write(batch)
                return
            await write(batch)

    async def write(batch: list[_Fetched]) -> None:
        if not batch:
            return
        checkpoint = state.applied([number for number, _ in batch])
        records = [record for _, page in batch for record in page]
        apply = functools.partial(apply_listed, resource=resource, run=run, records=records,
                                  mark=True, checkpoint=checkpoint, pages=len(batch))  # fmt: skip
        # A transaction in its thread cannot be stopped half way. When the pass is cancelled
        # meanwhile (a fetch gave up, or the caller stopped it), wait for it to commit or roll
        # back and count what it wrote: nothing of a pass may be written after it ended.
        writing = asyncio.ensure_future(write_pass(apply))
        try:
            await asyncio.shield(writing)
        finally:
            if not writing.done():
                await asyncio.wait({writing})
            if not writing.cancelled() and writing.exception() is None:
                result.add(writing.result(), len(records), pages=len(batch))
        if progress is not None:
            progress(state.checkpoint, state.total or 0)

    try:
        async with asyncio.TaskGroup() as tasks:
            writing = tasks.create_task(writer())
            # The first page says how many there are; then `concurrency` pages are in flight.
            first = state.take()
            if first is not None:
                await fetch(first)
            async with asyncio.TaskGroup() as fetching:
                for _ in range(max(1, options.concurrency)):
                    fetching.create_task(fetcher())
            await fetched.put((_DONE, []))
            await writing
    except BaseExceptionGroup as group:
        raise first_failure(group) from None


@dataclass(slots=True)
class _PageState:
    """Which page to fetch next, and the checkpoint: every page up to it is applied."""

    next_page: int
    checkpoint: int
    total: int | None = None
    done: set[int] = field(default_factory=set)

    def take(self) -> int | None:
        if self.total is not None and self.next_page > max(self.total, 1):
            return None
        number = self.next_page
        self.next_page += 1
        return number

    def saw_total(self, total_pages: int) -> None:
        # Drift may grow the total while we page: keep going to the largest one seen.
        self.total = max(self.total or 0, total_pages)

    def applied(self, numbers: Sequence[int]) -> int:
        self.done.update(numbers)
        while self.checkpoint + 1 in self.done:
            self.checkpoint += 1
            self.done.discard(self.checkpoint)
        return self.checkpoint
