"""Concurrent webhook senders that behave like HealthDock, and the ledger of what they were told.

Each sender posts signed events one after another. An event that is not acknowledged (a 503,
a dropped connection) is sent again after a short pause until it is, as HealthDock retries.
With several receivers, every event goes to each of them at once (duplicates across
processes). Every answer is counted; the event ids that got a 2xx are what the receiver
promised to keep. The senders run on a background thread and stop by themselves after
``max_seconds`` at the latest.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
from sqlalchemy import Engine, select

from mirror.schema import patients, webhook_events
from tests.factories import encode, event, patient, signed

URL_PATH = "/webhooks/healthdock"

# (sender number, event number) -> the event document; its "id" names it in the ledger.
EventFactory = Callable[[int, int], dict[str, Any]]


def new_patients(prefix: str) -> EventFactory:
    """Events that each create a patient of their own, named like the event."""

    def make(sender: int, number: int) -> dict[str, Any]:
        name = f"{prefix}-{sender}-{number}"
        return event("patient.created", patient(name), event_id=name)

    return make


@dataclass
class Ledger:
    """What the senders sent and what they were answered."""

    events: int = 0  # distinct events sent at least once
    acknowledged: set[str] = field(default_factory=set)  # ids with a 2xx from some receiver
    # Per event, the ``status`` of each 2xx answer (applied, duplicate, ...), from any receiver.
    receipts: dict[str, list[str]] = field(default_factory=dict)
    answers: Counter[int] = field(default_factory=Counter)  # HTTP status: count of answers
    unavailable_without_retry_after: int = 0
    connection_errors: int = 0  # refused or dropped before an answer
    timeouts: int = 0  # no answer within the client's timeout: the receiver hung

    @property
    def unavailable(self) -> int:
        return self.answers[503]

    def line(self) -> str:
        others = {
            status: n for status, n in sorted(self.answers.items()) if status not in (200, 503)
        }
        return (
            f"events={self.events} acknowledged={len(self.acknowledged)} "
            f"503={self.unavailable} other-statuses={others or 'none'} "
            f"connection-errors={self.connection_errors} timeouts={self.timeouts}"
        )


class Load:
    """``senders`` concurrent senders posting to every one of ``targets`` (base URLs)."""

    def __init__(
        self,
        targets: Sequence[str],
        make_event: EventFactory,
        *,
        senders: int = 8,
        max_seconds: float = 90.0,
        max_events: int | None = None,
        request_timeout: float = 30.0,
        retry_pause: float = 0.05,
    ) -> None:
        self.ledger = Ledger()
        self._targets = list(targets)
        self._make_event = make_event
        self._senders = senders
        self._max_seconds = max_seconds
        self._max_events = max_events
        self._request_timeout = request_timeout
        self._retry_pause = retry_pause
        self._stop = threading.Event()
        self._deadline = 0.0
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._deadline = time.monotonic() + self._max_seconds
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> Ledger:
        """Stop sending (an event still unacknowledged stays so) and return the ledger."""
        self._stop.set()
        self._thread.join(timeout=self._request_timeout + 10)
        return self.ledger

    def wait_until_done(self, seconds: float = 60.0) -> None:
        """Wait until the senders have sent ``max_events`` and had each acknowledged."""
        self._thread.join(timeout=seconds)
        if self._thread.is_alive():
            raise AssertionError(
                f"the senders did not finish in {seconds:.0f} s: {self.ledger.line()}"
            )

    def wait_for_acknowledgements(self, more: int, seconds: float = 60.0) -> None:
        """Wait until ``more`` events beyond those acknowledged so far are acknowledged."""
        self._wait(lambda: len(self.ledger.acknowledged), more, "acknowledgement", seconds)

    def wait_for_refusals(self, more: int, seconds: float = 30.0) -> None:
        """Wait until the receivers have answered 503 ``more`` times beyond those so far."""
        self._wait(lambda: self.ledger.unavailable, more, "503", seconds)

    def _wait(self, count: Callable[[], int], more: int, what: str, seconds: float) -> None:
        target = count() + more
        deadline = time.monotonic() + seconds
        while count() < target:
            if not self._thread.is_alive():
                raise AssertionError(f"the senders stopped early: {self.ledger.line()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not {more} more ({what}) within {seconds:.0f} s: {self.ledger.line()}"
                )
            time.sleep(0.02)

    def _stopping(self) -> bool:
        return self._stop.is_set() or time.monotonic() > self._deadline

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self._senders * len(self._targets))
        async with httpx.AsyncClient(timeout=self._request_timeout, limits=limits) as client:
            await asyncio.gather(*(self._sender(client, n) for n in range(self._senders)))

    async def _sender(self, client: httpx.AsyncClient, sender: int) -> None:
        number = 0
        while not self._stopping():
            if self._max_events is not None and self.ledger.events >= self._max_events:
                return
            number += 1
            document = self._make_event(sender, number)
            event_id = str(document["id"])
            body = encode(document)
            headers = signed(body)
            self.ledger.events += 1
            pending = list(self._targets)
            while pending and not self._stopping():
                delivered = await asyncio.gather(
                    *(self._post(client, target, body, headers, event_id) for target in pending)
                )
                pending = [t for t, done in zip(pending, delivered, strict=True) if not done]
                if pending:
                    await asyncio.sleep(self._retry_pause)

    async def _post(
        self,
        client: httpx.AsyncClient,
        target: str,
        body: bytes,
        headers: dict[str, str],
        event_id: str,
    ) -> bool:
        """One delivery attempt; True once the event needs no retry at this receiver."""
        ledger = self.ledger
        try:
            response = await client.post(f"{target}{URL_PATH}", content=body, headers=headers)
        except httpx.TimeoutException:
            ledger.timeouts += 1
            return False
        except httpx.TransportError:
            ledger.connection_errors += 1
            return False
        ledger.answers[response.status_code] += 1
        if 200 <= response.status_code < 300:
            ledger.acknowledged.add(event_id)
            ledger.receipts.setdefault(event_id, []).append(response.json()["data"]["status"])
            return True
        if response.status_code == 503 and "retry-after" not in response.headers:
            ledger.unavailable_without_retry_after += 1
        # A 503 is retried, as HealthDock does; any other status is final (and counted).
        return response.status_code != 503


def stored_and_mirrored(engine: Engine, event_ids: set[str]) -> set[str]:
    """Those of ``event_ids`` (from :func:`new_patients`) stored as applied, their patient
    in the mirror."""
    with engine.connect() as connection:
        applied = {
            (str(row.event_id), str(row.record_id))
            for row in connection.execute(
                select(webhook_events.c.event_id, webhook_events.c.record_id).where(
                    webhook_events.c.status == "applied"
                )
            )
        }
        mirrored = set(
            connection.execute(select(patients.c.id).where(patients.c.raw.is_not(None))).scalars()
        )
    return {
        event_id
        for event_id, record_id in applied
        if event_id in event_ids and record_id in mirrored
    }
