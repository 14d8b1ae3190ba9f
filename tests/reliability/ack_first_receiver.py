"""A deliberately broken receiver, for the crash harness's own test: it acknowledges each
event at once and commits it a moment later (a write-behind buffer), which is exactly the
bug the harness exists to catch. Never used outside tests.

    python -m tests.reliability.ack_first_receiver serve --no-scheduler
"""

from __future__ import annotations

import asyncio

from healthdock_mirror.cli import main
from mirror.eventlog import IncomingEvent
from mirror.ingest import Receipt
from receiver.intake import Intake

_WRITE_BEHIND_SECONDS = 0.3
_commit_later = Intake.submit
_pending: set[asyncio.Task[Receipt]] = set()


async def _acknowledge_first(self: Intake, item: IncomingEvent) -> Receipt:
    async def later() -> Receipt:
        await asyncio.sleep(_WRITE_BEHIND_SECONDS)
        return await _commit_later(self, item)

    task = asyncio.create_task(later())
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    return Receipt(None, "applied")


Intake.submit = _acknowledge_first  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
