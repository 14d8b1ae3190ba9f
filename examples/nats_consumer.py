"""A change-feed consumer on NATS JetStream: a durable pull consumer of the stream the mirror's
publisher fills, which handles every event once, in feed order, through crashes and restarts.

    HEALTHDOCK_NATS_URL=nats://127.0.0.1:4222 python examples/nats_consumer.py consumer-state.txt

Settings, from the environment: ``HEALTHDOCK_NATS_URL`` (default ``nats://127.0.0.1:4222``;
several servers comma-separated), ``HEALTHDOCK_NATS_STREAM`` (``HEALTHDOCK_EVENTS``),
``HEALTHDOCK_NATS_SUBJECT``, the subjects to take (``healthdock.events.>``, every event; or
``healthdock.events.patient.*``, say; the default follows ``HEALTHDOCK_NATS_SUBJECT_PREFIX``), and
``HEALTHDOCK_NATS_DURABLE``, the durable consumer's name (``healthdock-example``). Ctrl-C stops
it; run it again and it goes on where it stopped. Replace :func:`handle` with your own.

**Once.** JetStream delivers at least once: a message not acknowledged comes again, after the
consumer's ack wait or when the consumer comes back. Messages are acked after they are handled,
so a crash in between hands them over again. The state file makes that once: after each event
is handled it holds that message's stream sequence (written then renamed, so a crash leaves the
old number or the new one); a message at or below it was handled before its ack was lost, and is
acked without being handled again. What is left is the instant between ``handle`` returning and
the rename: if ``handle`` writes to a database, keep the sequence in the same transaction.

**Order.** JetStream keeps one order per stream: the feed's (the publisher stores each event
right after the one before it). A consumer is given the stream's messages in that order; a
subject filter keeps it among those it takes. There is no order between two streams. Redelivery
can upset it, and with it the rule above: JetStream hands out newer messages while unacked ones
wait out their ack wait. So the consumer never goes on past a message it was given and did not
handle. A failing ``handle`` stops it. It starts with nothing unacked: if an earlier run left
messages unacked, it sets the durable back to its ack floor, the first of them (those handled
already are then skipped). It does the same when a delivery never reached it (the consumer
sequence skips one: lost in a reconnect). Every message at or below the state file's sequence
was handled, then, and none above it.

One process per durable name, with its own state file. To read the feed again from the start,
delete both (``nats consumer rm HEALTHDOCK_EVENTS healthdock-example``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

Event = dict[str, Any]
Handler = Callable[[Event], None]

DEFAULT_URL = "nats://127.0.0.1:4222"
DEFAULT_STREAM = "HEALTHDOCK_EVENTS"
DEFAULT_PREFIX = "healthdock.events"
DEFAULT_DURABLE = "healthdock-example"
FETCH_SECONDS = 5.0  # how long one fetch waits for a message, in run()
RETRY_SECONDS = 2.0


@dataclass(frozen=True)
class Settings:
    url: str = DEFAULT_URL
    stream: str = DEFAULT_STREAM
    subject: str = f"{DEFAULT_PREFIX}.>"
    durable: str = DEFAULT_DURABLE
    ack_wait: float = 30.0  # seconds before JetStream delivers an unacked message again
    batch: int = 100

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        prefix = env.get("HEALTHDOCK_NATS_SUBJECT_PREFIX", DEFAULT_PREFIX)
        return cls(
            url=env.get("HEALTHDOCK_NATS_URL", DEFAULT_URL),
            stream=env.get("HEALTHDOCK_NATS_STREAM", DEFAULT_STREAM),
            subject=env.get("HEALTHDOCK_NATS_SUBJECT", f"{prefix}.>"),
            durable=env.get("HEALTHDOCK_NATS_DURABLE", DEFAULT_DURABLE),
        )

    @property
    def servers(self) -> list[str]:
        return [server.strip() for server in self.url.split(",") if server.strip()]


@dataclass
class Tally:
    handled: int = 0
    skipped: int = 0  # delivered again after they were handled: acked, not handled twice


class StateAhead(ValueError):
    """The state file is past the end of the stream: not this stream's state."""


class _Missed(Exception):
    """A delivery never reached this consumer."""


def handle(event: Event) -> None:
    """Replace with your own. Only identifiers here: the payload carries patient data, which
    has no place in a log."""
    print(event["seq"], event["event_type"], event["record_id"], flush=True)


def load_position(path: Path) -> int:
    """The stream sequence of the last handled message, or 0 before the first."""
    return int(path.read_text()) if path.exists() else 0


def save_position(path: Path, seq: int) -> None:
    # Write then rename: a crash leaves the old number or the new one, never half of one.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(str(seq))
    partial.replace(path)


def consumer_config(settings: Settings, start: int = 0) -> ConsumerConfig:
    """The durable consumer; from stream sequence ``start`` when given, else from the first."""
    return ConsumerConfig(
        durable_name=settings.durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start else DeliverPolicy.ALL,
        opt_start_seq=start or None,
        ack_wait=settings.ack_wait,
        filter_subject=settings.subject,
    )


async def consume_available(
    settings: Settings, state_file: Path, handler: Handler = handle, *, idle: float = 1.0
) -> Tally:
    """Handle every message there is, and return once none came for ``idle`` seconds."""
    tally = Tally()
    async with _connected(settings, reconnect=False) as client:
        await _consume(client, settings, state_file, handler, tally, idle=idle)
    return tally


async def run(settings: Settings, state_file: Path, handler: Handler = handle) -> NoReturn:
    """Handle messages as they come, until cancelled; through NATS outages."""
    tally = Tally()
    while True:
        try:
            async with _connected(settings, reconnect=True) as client:
                await _consume(client, settings, state_file, handler, tally, idle=None)
        except NotFoundError:
            print(f"no stream {settings.stream} yet (is the publisher on?); retrying",
                  file=sys.stderr)  # fmt: skip
        except (NatsError, OSError, TimeoutError) as error:
            print(f"NATS unavailable ({type(error).__name__}); retrying", file=sys.stderr)
        await asyncio.sleep(RETRY_SECONDS)


@contextlib.asynccontextmanager
async def _connected(settings: Settings, *, reconnect: bool) -> AsyncIterator[Client]:
    async def error(problem: Exception) -> None:
        print(f"NATS: {type(problem).__name__}", file=sys.stderr)  # one line, no traceback

    client = await nats.connect(
        servers=settings.servers, name="healthdock nats_consumer example", connect_timeout=2,
        allow_reconnect=reconnect, max_reconnect_attempts=-1 if reconnect else 0,
        error_cb=error,
    )  # fmt: skip
    try:
        yield client
    finally:
        with contextlib.suppress(NatsError, OSError, TimeoutError):
            await client.close()


async def _consume(
    client: Client, settings: Settings, state_file: Path, handler: Handler, tally: Tally,
    *, idle: float | None,
) -> None:  # fmt: skip
    """Handle messages until none came for ``idle`` seconds (``None``: for ever)."""
    js = client.jetstream()
    while True:
        try:
            await _session(client, js, settings, state_file, handler, tally, idle=idle)
            return
        except _Missed:
            continue  # start again, from the ack floor


async def _session(
    client: Client, js: JetStreamContext, settings: Settings, state_file: Path,
    handler: Handler, tally: Tally, *, idle: float | None,
) -> None:  # fmt: skip
    delivered = await _prepare(js, settings)
    position = load_position(state_file)
    last = (await js.stream_info(settings.stream)).state.last_seq
    if position > last:
        raise StateAhead(
            f"{state_file} says stream sequence {position} was handled, but the stream "
            f"{settings.stream} ends at {last}: was the stream made anew? Then delete the "
            "state file and the durable consumer"
        )
    subscription = await js.pull_subscribe_bind(settings.durable, stream=settings.stream)
    try:
        while True:
            try:
                batch = await subscription.fetch(settings.batch, timeout=idle or FETCH_SECONDS)
            except TimeoutError:
                if idle is not None:
                    return
                continue
            for message in batch:
                sequence = message.metadata.sequence
                if sequence.consumer != delivered + 1:
                    raise _Missed
                delivered = sequence.consumer
                if sequence.stream <= position:
                    tally.skipped += 1  # handled before; only its ack was lost
                    await message.ack()
                    continue
                handler(json.loads(message.data))
                save_position(state_file, sequence.stream)
                position = sequence.stream
                tally.handled += 1
                await message.ack()
            await client.flush()  # the batch's acks reached the server
    finally:
        with contextlib.suppress(NatsError, OSError, TimeoutError):
            await subscription.unsubscribe()


async def _prepare(js: JetStreamContext, settings: Settings) -> int:
    """The durable consumer, with nothing delivered and unacked; returns the consumer sequence
    of its last delivery."""
    try:
        info = await js.consumer_info(settings.stream, settings.durable)
    except NotFoundError:
        info = await js.add_consumer(settings.stream, consumer_config(settings))
    if info.num_ack_pending:
        # Messages an earlier run was given and did not ack (it stopped, or they never reached
        # it). JetStream would deliver newer ones before those: start again from the first
        # unacked one instead. Those at or below the state file's sequence are then skipped.
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        await js.delete_consumer(settings.stream, settings.durable)
        info = await js.add_consumer(settings.stream, consumer_config(settings, floor + 1))
    return info.delivered.consumer_seq if info.delivered is not None else 0


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: nats_consumer.py STATE_FILE")
    state_file = Path(sys.argv[1])
    try:
        asyncio.run(run(Settings.from_env(), state_file))
    except KeyboardInterrupt:
        pass  # Ctrl-C: whatever was handled is in the state file; unacked messages come again
    except StateAhead as error:
        sys.exit(str(error))


if __name__ == "__main__":
    main()
