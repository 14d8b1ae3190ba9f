"""HealthDock's webhook sender: signed events POSTed to the configured URL, retried on
failure, with switches to drop, duplicate, delay and reorder them.

A mutation only queues its event; a worker task on the running event loop delivers it, so a
mutation never waits for the receiver. With no loop running (a plain synchronous test), events
wait until ``await drain()`` or a served app's lifespan starts the worker. The queue is
ordered by due time: delays and retries let later events overtake earlier ones, as with a
real sender. Everything random is drawn from one seeded generator, four values per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import hmac
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from fake_healthdock.overrides import apply_overrides
from fake_healthdock.records import webhook_data
from fake_healthdock.store import Change

SIGNATURE_HEADER = "X-HealthDock-Signature"
_REORDER_HOLD_SECONDS = 1.0
_DUPLICATE_GAP_SECONDS = 0.1
_POLL_SECONDS = 0.005
_TIMEOUT = httpx.Timeout(10.0)


def sign(body: bytes, secret: str | bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of body>``: the reference's ``verifyWebhook`` accepts it."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.digest(key, body, "sha256").hex()


def event_body(event_id: str, change: Change) -> bytes:
    """The event as HealthDock sends it: compact JSON, keys in this order."""
    event: dict[str, Any] = {
        "id": event_id,
        "event": change.event,
        "timestamp": change.timestamp,
        "data": webhook_data(change.record),
    }
    return msgspec.json.encode(event)


@dataclass
class WebhookSwitches:
    """How deliveries misbehave (and how hard the sender tries), changeable at run time."""

    drop_rate: float = 0.0
    """Events never sent."""
    duplicate_rate: float = 0.0
    """Events sent twice, byte for byte (the copy shortly after the original)."""
    delay: tuple[float, float] | None = None
    """Seconds each event waits before its first attempt, drawn from this (min, max)."""
    reorder: int = 0
    """Hold events back until this many are waiting (or for a second), then send that window
    in shuffled order. 0 or 1: no reordering."""
    max_attempts: int = 5
    retry_backoff: float = 0.5
    """Seconds before the first retry of a failed delivery (non-2xx or no connection),
    doubling each time."""
    concurrency: int = 1
    """Deliveries in flight at once; above 1, arrival order is up to the receiver."""

    def __post_init__(self) -> None:
        for name in ("drop_rate", "duplicate_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.delay is not None and not 0.0 <= self.delay[0] <= self.delay[1]:
            raise ValueError("delay must be a (min, max) range of seconds, 0 <= min <= max")
        if self.reorder < 0 or self.max_attempts < 1 or self.concurrency < 1:
            raise ValueError("reorder must be >= 0, max_attempts and concurrency >= 1")
        if self.retry_backoff < 0:
            raise ValueError("retry_backoff must be >= 0")

    def updated(self, changes: Mapping[str, object]) -> WebhookSwitches:
        """A copy with ``changes`` applied (unknown names and bad values raise ValueError)."""
        return apply_overrides(self, changes)


@dataclass
class WebhookStats:
    events: int = 0
    """Mutations that produced an event."""
    unsent: int = 0
    """Events with no webhook URL configured."""
    dropped: int = 0
    duplicated: int = 0
    attempts: int = 0
    """POSTs made, retries included."""
    delivered: int = 0
    """Deliveries the receiver answered 2xx (a duplicate counts twice)."""
    retried: int = 0
    failed: int = 0
    """Deliveries given up after ``max_attempts``."""


@dataclass(order=True)
class _Delivery:
    due: float
    sequence: int
    body: bytes = field(compare=False)
    attempt: int = field(default=1, compare=False)


class WebhookSender:
    def __init__(
        self,
        *,
        url: str | None,
        secret: str | bytes | None,
        seed: int,
        switches: WebhookSwitches | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self.switches = switches or WebhookSwitches()
        self.stats = WebhookStats()
        self._secret = secret
        self._transport = transport
        self._rng = random.Random(f"healthdock:{seed}:webhooks")  # noqa: S311 -- reproducible
        self._lock = threading.Lock()
        self._queue: list[_Delivery] = []
        self._held: list[tuple[bytes, bool, float]] = []
        self._held_since = 0.0
        self._sequence = 0
        self._in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None

    @property
    def pending(self) -> int:
        """Deliveries not yet finished: queued, held back for reordering, or in flight."""
        with self._lock:
            return len(self._queue) + len(self._held) + self._in_flight

    def send(self, change: Change) -> None:
        """Queue the webhook for ``change`` (or drop it, as the switches say)."""
        with self._lock:
            self.stats.events += 1
            event_id = f"evt_{self._rng.getrandbits(96):024x}"
            drop, duplicate, delay, gap = (self._rng.random() for _ in range(4))
            if self.url is None:
                self.stats.unsent += 1
                return
            switches = self.switches
            if drop < switches.drop_rate:
                self.stats.dropped += 1
                return
            twice = duplicate < switches.duplicate_rate
            self.stats.duplicated += twice
            low, high = switches.delay or (0.0, 0.0)
            body = event_body(event_id, change)
            wait = low + (high - low) * delay
            if switches.reorder > 1:
                if not self._held:
                    self._held_since = time.monotonic()
                self._held.append((body, twice, wait))
                if len(self._held) >= switches.reorder:
                    self._release_held()
            else:
                self._schedule(body, twice, wait, gap)
        self._wake()

    def start(self) -> None:
        """Start delivering on the running event loop (a served app's lifespan calls this)."""
        self._wake(start=True)

    async def drain(self, within: float = 10.0) -> None:
        """Deliver everything queued (held-back events too); raise TimeoutError if that takes
        longer than ``within`` seconds."""
        with self._lock:
            self._release_held()
        self._wake(start=True)
        deadline = time.monotonic() + within
        while self.pending:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.pending} webhook deliveries pending after {within}s")
            await asyncio.sleep(_POLL_SECONDS)

    async def close(self) -> None:
        """Stop the worker if it runs on this loop; undelivered events stay queued."""
        worker = self._worker
        if worker is not None and self._loop is asyncio.get_running_loop():
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    def _schedule(self, body: bytes, twice: bool, wait: float, gap: float) -> None:
        due = time.monotonic() + wait
        self._push(_Delivery(due, 0, body))
        if twice:
            self._push(_Delivery(due + _DUPLICATE_GAP_SECONDS * gap, 0, body))

    def _push(self, delivery: _Delivery) -> None:
        self._sequence += 1
        delivery.sequence = self._sequence
        heapq.heappush(self._queue, delivery)

    def _release_held(self) -> None:
        held, self._held = self._held, []
        self._rng.shuffle(held)
        for body, twice, wait in held:
            self._schedule(body, twice, wait, 0.0)

    def _wake(self, *, start: bool = False) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        loop, worker, wakeup = self._loop, self._worker, self._wakeup
        alive = worker is not None and not worker.done() and not (loop and loop.is_closed())
        if alive and loop is not None and wakeup is not None:
            if running is loop:
                wakeup.set()
            else:
                # The worker runs on another thread's loop (a served fake).
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(wakeup.set)
            return
        if running is not None and (start or self.url is not None):
            self._loop = running
            self._wakeup = asyncio.Event()
            self._worker = running.create_task(self._run(self._wakeup))

    async def _run(self, wakeup: asyncio.Event) -> None:
        client = httpx.AsyncClient(transport=self._transport, timeout=_TIMEOUT)
        deliveries: set[asyncio.Task[None]] = set()
        try:
            while True:
                wakeup.clear()
                if len(deliveries) >= self.switches.concurrency:
                    await asyncio.wait(deliveries, return_when=asyncio.FIRST_COMPLETED)
                    continue
                delivery, wait = self._next()
                if delivery is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wakeup.wait(), wait)
                    continue
                task = asyncio.create_task(self._deliver(client, delivery))
                deliveries.add(task)
                task.add_done_callback(deliveries.discard)
        finally:
            for task in deliveries:
                task.cancel()
            await asyncio.gather(*deliveries, return_exceptions=True)
            await client.aclose()

    def _next(self) -> tuple[_Delivery | None, float | None]:
        """The next delivery that is due, or how long until one may be."""
        with self._lock:
            now = time.monotonic()
            if self._held and now - self._held_since >= _REORDER_HOLD_SECONDS:
                self._release_held()
            if self._queue and self._queue[0].due <= now:
                self._in_flight += 1
                return heapq.heappop(self._queue), None
            waits = [self._queue[0].due - now] if self._queue else []
            if self._held:
                waits.append(self._held_since + _REORDER_HOLD_SECONDS - now)
            return None, min(waits) if waits else None

    async def _deliver(self, client: httpx.AsyncClient, delivery: _Delivery) -> None:
        assert self.url is not None
        headers = {"Content-Type": "application/json", "User-Agent": "HealthDock-Webhooks/1.0"}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(delivery.body, self._secret)
        ok = False
        try:
            with self._lock:
                self.stats.attempts += 1
            response = await client.post(self.url, content=delivery.body, headers=headers)
            ok = response.is_success
        except httpx.HTTPError:
            ok = False
        except asyncio.CancelledError:
            # The loop is going away: keep the event for whichever loop drains next.
            with self._lock:
                self._push(_Delivery(time.monotonic(), 0, delivery.body, delivery.attempt))
                self._in_flight -= 1
            raise
        with self._lock:
            self._in_flight -= 1
            if ok:
                self.stats.delivered += 1
            elif delivery.attempt < self.switches.max_attempts:
                self.stats.retried += 1
                due = time.monotonic() + self.switches.retry_backoff * 2 ** (delivery.attempt - 1)
                self._push(_Delivery(due, 0, delivery.body, delivery.attempt + 1))
            else:
                self.stats.failed += 1
        self._wake()
