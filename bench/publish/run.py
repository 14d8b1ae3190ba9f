"""Publish benchmark: the change feed's publisher to NATS JetStream, on SQLite and PostgreSQL.

1. **throughput**: an event log of ``--events`` distinct events, published whole by
   ``publisher.Publisher`` (in this process) to a fresh stream, timed until its cursor reaches
   the end; side by side, in alternating rounds, a bare nats-py loop publishing the same message
   bodies to another fresh stream, ``publish_async`` in batches of the same size and awaiting
   each batch's acks, with no database (and the same loop with the publisher's three headers).
2. **latency**: ``healthdock-mirror serve --no-scheduler`` with the publisher on, a probe that
   posts one signed webhook every ``--probe-interval`` seconds, and a JetStream consumer in this
   process: from each probe's 2xx to its message's arrival, without background load and under
   bench/ingest's wrk load (its Lua script, distinct pre-signed events, 32 connections).

Prints Markdown tables and writes them, with the raw numbers, to bench/publish/results/.

    .venv/bin/python -m bench.publish.run                      # the full benchmark
    .venv/bin/python -m bench.publish.run --rounds 1 --events 5000 --probes 40   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.metadata
import json
import logging
import math
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
import psycopg
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from bench.databases import drop_pg_database, pg_service_url, pg_settings, recreate_pg_database
from bench.ingest.events import event_body, write_events
from bench.ingest.run import (
    ENDPOINT,
    LOG_PROBLEMS,
    LUA_SCRIPT,
    WrkRun,
    _machine_cpu,
    _process_cpu_seconds,
    ensure_wrk,
    prepare_database,
    running_server,
    service_env,
    stored_events,
)
from bench.processes import RESULT_MARKER, BenchError, die_with_parent, stop, unwind_on_signals
from config import Settings
from mirror import (
    MAX_LIMIT,
    DatabaseUnavailable,
    EventSource,
    IncomingEvent,
    ReceiptStatus,
    create_mirror_engine,
    dedup_key,
    ingest,
    publications,
    read_batch,
    read_event,
    read_transaction,
    upgrade,
)
from publisher import (
    CURSOR_HEADER,
    Publisher,
    ensure_stream,
    message_body,
    message_id,
    publication_name,
    subject_for,
)
from publisher.publish import EXPECTED_LAST_HEADER, MSG_ID_HEADER
from receiver.signature import SIGNATURE_HEADER, sign

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
RESULTS = HERE / "results"
DATABASES = ("sqlite", "postgresql")
PARTS = ("throughput", "latency")
PUBLISHER, BARE, BARE_HEADERS = "publisher", "bare", "bare+headers"
MAX_AGE_DAYS = 1.0  # the streams live for a run only
FILL_BATCH = 2_000  # events per ingest transaction while filling the event log
HORIZON_WAIT_SECONDS = 60.0
PROBE_TYPE = "patient.updated"  # wrk's load sends only patient.created and appointment.created
NO_LOAD, WRK_LOAD = "none", "wrk"


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _percentile(values: Sequence[float], share: float) -> float:
    """Nearest rank: the smallest value at least ``share`` of the values are at or below."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _short(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"


class _Collect(logging.Handler):
    """Warnings and errors of a logger, kept for the results (the publisher logs no content)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


# --- the event log ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One feed event as the publisher sends it: what the bare loops send too."""

    event_type: str
    body: bytes
    msg_id: str
    cursor: str


@dataclass
class Feed:
    database: str
    database_url: str
    events: int
    fill_seconds: float
    walk_seconds: float
    end_cursor: str
    body_bytes: int


def incoming(body: bytes, received_at: datetime) -> IncomingEvent:
    """A signed webhook body as the receiver stores it (the bench's own builder)."""
    event = read_event(body)
    return IncomingEvent(
        EventSource.WEBHOOK, dedup_key(event.event_id, body), event, body, [], received_at
    )


def fill_event_log(database_url: str, count: int) -> float:
    """``count`` distinct events (bench/ingest's bodies: 90% new patients, 10% appointments)
    stored and applied in transactions of FILL_BATCH; returns the seconds it took."""
    engine = create_mirror_engine(database_url)
    try:
        upgrade(engine)
        rng = random.Random(1)
        began = time.perf_counter()
        now = datetime.now(UTC)
        for start in range(0, count, FILL_BATCH):
            batch = [
                incoming(event_body(number, rng), now)
                for number in range(start, min(count, start + FILL_BATCH))
            ]
            receipts = ingest(engine, batch)
            bad = [r.status for r in receipts if r.status != ReceiptStatus.APPLIED]
            if bad:
                raise BenchError(f"filling the event log: {len(bad)} events not applied: {bad[:3]}")
        return time.perf_counter() - began
    finally:
        engine.dispose()


def walk_feed(database_url: str, expected: int) -> tuple[list[Message], float]:
    """Every feed event, in feed order, as the publisher will send it. On PostgreSQL the feed
    ends at the horizon (mirror/feed.py): a transaction open anywhere on the server holds it
    back, so this waits up to HORIZON_WAIT_SECONDS for the ``expected`` events."""
    engine = create_mirror_engine(database_url)
    try:
        began = time.perf_counter()
        messages: list[Message] = []
        cursor = "0"
        while True:
            batch = read_batch(engine, cursor, limit=MAX_LIMIT)
            if not batch.events:
                if len(messages) >= expected or time.perf_counter() - began > HORIZON_WAIT_SECONDS:
                    break
                time.sleep(0.2)
                continue
            for event, after in zip(batch.events, batch.cursors, strict=True):
                messages.append(
                    Message(event.event_type, message_body(event), message_id(event), after)
                )
            cursor = batch.next_cursor
        return messages, time.perf_counter() - began
    finally:
        engine.dispose()


def pg_open_transactions(admin_url: str) -> list[str]:
    """Transactions open elsewhere on the PostgreSQL server, in any database: each holds the
    change feed's horizon back (mirror/feed.py). Their database, state and age only."""
    query = (
        "SELECT datname, state, extract(epoch FROM now() - xact_start)::float8 "
        "FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        "AND (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL) ORDER BY xact_start"
    )
    with psycopg.connect(admin_url, autocommit=True) as connection:
        rows = connection.execute(query).fetchall()
    return [f"{db} ({state}) open {age or 0:.1f} s" for db, state, age in rows]


def fresh_database(kind: str, workdir: Path, label: str, args: argparse.Namespace) -> str:
    if kind == "sqlite":
        path = workdir / f"{label}.db"
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        return f"sqlite:///{path}"
    recreate_pg_database(args.pg_admin_url, args.pg_database)
    return pg_service_url(args.pg_admin_url, args.pg_database)


# --- NATS helpers -------------------------------------------------------------------------


def unique_names(label: str) -> tuple[str, str]:
    """A stream name and a subject prefix no other run (nor anything else on the server) uses."""
    token = f"{os.getpid()}_{uuid.uuid4().hex[:10]}"
    stream = f"BENCH_PUBLISH_{label}_{token}".replace(".", "_").replace("+", "_")[:64]
    prefix = f"bench.publish.{label.replace('+', '_').replace('.', '_')}.{token}"
    return stream, prefix


async def _connect(url: str) -> Client:
    return await nats.connect(servers=[url], connect_timeout=2, max_reconnect_attempts=2)


async def delete_streams(url: str, names: Sequence[str]) -> list[str]:
    """Delete these streams (ours, by name); returns those that could not be deleted."""
    if not names:
        return []
    left = []
    nc = await _connect(url)
    try:
        js = nc.jetstream()
        for name in names:
            try:
                await js.delete_stream(name)
            except NotFoundError:
                pass
            except (NatsError, OSError, TimeoutError):
                left.append(name)
    finally:
        await nc.close()
    return left


async def _stream_state(js: JetStreamContext, stream: str) -> tuple[int, str | None]:
    """The stream's message count and its last message's feed cursor header."""
    info = await js.stream_info(stream)
    last_cursor = None
    if info.state.last_seq:
        message = await js.get_msg(stream, info.state.last_seq)
        last_cursor = (message.headers or {}).get(CURSOR_HEADER)
    return info.state.messages, last_cursor


# --- part 1: throughput -------------------------------------------------------------------


@dataclass
class ThroughputRun:
    database: str
    round: int
    variant: str
    events: int
    stream: str
    ok: bool = False
    error: str = ""
    published: int = 0
    seconds: float = float("nan")
    events_per_s: float = float("nan")
    stream_messages: int | None = None
    last_cursor_ok: bool | None = None  # the stream's last message carries the feed's end
    stored_cursor_ok: bool | None = None  # the publisher's cursor in the database: the end
    batches: int = 0
    refused: int = 0
    realigned: int = 0
    log_problems: list[str] = field(default_factory=list)
    loadavg_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # PostgreSQL: transactions open elsewhere on the server as the run began (see walk_feed).
    pg_open_transactions: list[str] = field(default_factory=list)


def _settings(database_url: str, stream: str, prefix: str, args: argparse.Namespace) -> Settings:
    # Explicit values for everything the publisher reads, and no .env: nothing in the caller's
    # environment can change a run.
    return Settings(
        _env_file=None,
        database_url=database_url,
        nats_url=args.nats_url,
        nats_stream=stream,
        nats_subject_prefix=prefix,
        nats_batch=args.batch,
        nats_max_age_days=MAX_AGE_DAYS,
        database_timeout_seconds=5.0,
    )


async def publisher_round(
    run: ThroughputRun, feed: Feed, prefix: str, args: argparse.Namespace
) -> None:
    settings = _settings(feed.database_url, run.stream, prefix, args)
    engine = create_mirror_engine(feed.database_url)
    logger = logging.getLogger("publisher")
    collect = _Collect()
    logger.addHandler(collect)
    publisher = Publisher(settings, engine)
    stop_publisher = asyncio.Event()
    try:
        began = time.perf_counter()
        task = asyncio.create_task(publisher.run(stop_publisher), name="bench-publisher")
        deadline = began + args.round_timeout
        # The in-memory count moves right after each batch's cursor commit: polling it costs no
        # query; the stored cursor is checked against the feed's end afterwards.
        while publisher.stats.published < feed.events and not task.done():
            if time.perf_counter() > deadline:
                break
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - began
        run.published = publisher.stats.published
        stop_publisher.set()
        try:
            await asyncio.wait_for(task, timeout=30)
        except Exception as error:  # a publisher that died is this round's result
            run.error = f"publisher task: {_short(error)}"
        run.batches = publisher.stats.batches
        run.refused = publisher.stats.refused
        run.realigned = publisher.stats.realigned
        stored = await asyncio.to_thread(
            read_transaction, engine,
            functools.partial(publications.publication, name=publication_name(settings)),
        )  # fmt: skip
        run.stored_cursor_ok = stored.cursor == feed.end_cursor
        nc = await _connect(args.nats_url)
        try:
            run.stream_messages, last = await _stream_state(nc.jetstream(), run.stream)
        finally:
            await nc.close()
        run.last_cursor_ok = last == feed.end_cursor
        if run.published < feed.events and not run.error:
            run.error = (
                f"published {run.published} of {feed.events} within {args.round_timeout:g} s"
            )
        elif not run.error and not (
            run.stored_cursor_ok and run.last_cursor_ok and run.stream_messages == feed.events
        ):
            run.error = (
                f"incomplete: stream holds {run.stream_messages} of {feed.events}, stored "
                f"cursor {stored.cursor!r} (end {feed.end_cursor!r}), last message's cursor "
                f"{last!r}"
            )
        run.seconds = elapsed
        run.events_per_s = run.published / elapsed if elapsed > 0 else float("nan")
        run.ok = not run.error
    finally:
        logger.removeHandler(collect)
        run.log_problems = collect.lines
        engine.dispose()


async def bare_round(
    run: ThroughputRun, messages: Sequence[Message], prefix: str, args: argparse.Namespace
) -> None:
    """publish_async of every body in batches of --batch, each batch's acks awaited."""
    with_headers = run.variant == BARE_HEADERS
    subjects = [subject_for(prefix, m.event_type) for m in messages]
    began = time.perf_counter()
    nc = await _connect(args.nats_url)
    try:
        js = nc.jetstream(publish_async_max_pending=2 * args.batch)
        await ensure_stream(js, run.stream, prefix, MAX_AGE_DAYS)
        deadline = began + args.round_timeout
        for start in range(0, len(messages), args.batch):
            pending = []
            for index in range(start, min(len(messages), start + args.batch)):
                message = messages[index]
                headers = (
                    {
                        MSG_ID_HEADER: message.msg_id,
                        CURSOR_HEADER: message.cursor,
                        EXPECTED_LAST_HEADER: str(index),
                    }
                    if with_headers
                    else None
                )
                pending.append(
                    await js.publish_async(subjects[index], message.body, headers=headers)
                )
            remaining = max(0.1, deadline - time.perf_counter())
            acks = await asyncio.wait_for(asyncio.gather(*pending), timeout=remaining)
            if any(ack.duplicate for ack in acks):
                raise BenchError("JetStream called a bare message a duplicate")
            run.published += len(acks)
            run.batches += 1
        elapsed = time.perf_counter() - began
        run.stream_messages, _ = await _stream_state(js, run.stream)
    finally:
        await nc.close()
    run.seconds = elapsed
    run.events_per_s = run.published / elapsed
    if run.stream_messages != len(messages):
        run.error = f"stream holds {run.stream_messages} of {len(messages)}"
    run.ok = not run.error


def throughput_round(
    kind: str,
    round_number: int,
    variant: str,
    feed: Feed,
    messages: Sequence[Message],
    streams: list[str],
    args: argparse.Namespace,
) -> ThroughputRun:
    stream, prefix = unique_names(f"{kind}_{round_number}_{variant}")
    streams.append(stream)
    run = ThroughputRun(kind, round_number, variant, feed.events, stream)
    run.loadavg_before = os.getloadavg()
    if kind == "postgresql":
        run.pg_open_transactions = pg_open_transactions(args.pg_admin_url)
    try:
        if variant == PUBLISHER:
            asyncio.run(publisher_round(run, feed, prefix, args))
        else:
            asyncio.run(bare_round(run, messages, prefix, args))
    except (BenchError, NatsError, OSError, TimeoutError) as error:
        run.ok, run.error = False, _short(error)
    except Exception as error:  # reported, never dropped: the round failed for this reason
        run.ok, run.error = False, f"unexpected {_short(error)}"
    finally:
        with suppress(NatsError, OSError, TimeoutError):
            if not asyncio.run(delete_streams(args.nats_url, [stream])):
                streams.remove(stream)
    return run


def throughput_part(
    kind: str, workdir: Path, args: argparse.Namespace, runs: list[ThroughputRun],
    feeds: list[Feed], streams: list[str],
) -> None:  # fmt: skip
    database_url = fresh_database(kind, workdir, f"throughput-{kind}", args)
    print(f"{kind}: filling the event log with {args.events} events ...", flush=True)
    fill_seconds = fill_event_log(database_url, args.events)
    messages, walk_seconds = walk_feed(database_url, args.events)
    if len(messages) != args.events:
        held = pg_open_transactions(args.pg_admin_url) if kind == "postgresql" else []
        raise BenchError(
            f"{kind}: the feed shows {len(messages)} of {args.events} stored events after "
            f"{HORIZON_WAIT_SECONDS:g} s"
            + (f"; open elsewhere on the server: {held}" if held else "")
        )
    feed = Feed(
        kind, database_url, len(messages), fill_seconds, walk_seconds, messages[-1].cursor,
        sum(len(m.body) for m in messages),
    )  # fmt: skip
    feeds.append(feed)
    print(
        f"{kind}: {feed.events} events in {fill_seconds:.1f} s "
        f"({feed.events / fill_seconds:.0f}/s), {feed.body_bytes / feed.events:.0f} B a message",
        flush=True,
    )
    variants = [BARE, PUBLISHER] + ([] if args.no_headers_baseline else [BARE_HEADERS])
    for round_number in range(1, args.rounds + 1):
        # The order flips each round, so drift favours no variant.
        for variant in variants if round_number % 2 else reversed(variants):
            run = throughput_round(kind, round_number, variant, feed, messages, streams, args)
            runs.append(run)
            verdict = "ok" if run.ok else f"FAILED: {run.error}"
            print(
                f"{kind} round {round_number} {variant}: {run.events_per_s:.0f} events/s "
                f"({run.published} in {run.seconds:.2f} s), {verdict}",
                flush=True,
            )
            for line in run.log_problems[:3]:
                print(f"  {line}", flush=True)


def summarize_throughput(
    runs: Sequence[ThroughputRun], databases: Sequence[str]
) -> list[dict[str, Any]]:
    rows = []
    for kind in databases:
        mine = [r for r in runs if r.database == kind]
        by_variant = {
            v: [r for r in mine if r.variant == v] for v in (PUBLISHER, BARE, BARE_HEADERS)
        }
        ok_eps = {v: {r.round: r.events_per_s for r in rs if r.ok} for v, rs in by_variant.items()}
        for variant, those in by_variant.items():
            if not those:
                continue
            good = [r for r in those if r.ok]
            row: dict[str, Any] = {
                "database": kind,
                "variant": variant,
                "rounds": len(those),
                "failed": len(those) - len(good),
                "median_events_per_s": _median([r.events_per_s for r in good]),
                "median_seconds": _median([r.seconds for r in good]),
                "vs_bare": None,
                "vs_bare_headers": None,
                "log_problems": sum(len(r.log_problems) for r in those),
            }
            if variant == PUBLISHER:
                for key, other in (("vs_bare", BARE), ("vs_bare_headers", BARE_HEADERS)):
                    ratios = [
                        eps / ok_eps[other][n]
                        for n, eps in ok_eps[PUBLISHER].items()
                        if ok_eps[other].get(n)
                    ]
                    row[key] = _median(ratios) if ratios else None
            rows.append(row)
    return rows


# --- part 2: latency ----------------------------------------------------------------------


@dataclass
class Probe:
    index: int
    event_id: str
    sent: float = float("nan")
    acked: float | None = None  # when the whole 2xx response was in
    status: int | None = None
    received: float | None = None  # when the consumer got its message
    error: str = ""


@dataclass
class LatencyRun:
    database: str
    load: str
    round: int
    stream: str
    ok: bool = False
    error: str = ""
    probes: int = 0
    acknowledged: int = 0  # 2xx
    received: int = 0  # of those, delivered by the consumer
    latency_p50_ms: float = float("nan")
    latency_p99_ms: float = float("nan")
    latency_max_ms: float = float("nan")
    latency_min_ms: float = float("nan")
    http_p50_ms: float = float("nan")
    http_p99_ms: float = float("nan")
    window_s: float = float("nan")  # from the first probe to the last 2xx
    stored_in_window: int = 0
    receiver_events_per_s: float = float("nan")
    published_in_window: int = 0
    published_per_s: float = float("nan")
    backlog_at_end: int | None = None  # stored but not yet in the stream, at the window's end
    server_cpu_pct: float = float("nan")
    machine_busy_pct: float = float("nan")
    wrk: WrkRun | None = None
    loadavg_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    log_problems: list[str] = field(default_factory=list)
    exit_code: int | None = None
    latencies_ms: list[float] = field(default_factory=list)  # by probe, None-free
    probe_errors: list[str] = field(default_factory=list)
    pg_open_transactions: list[str] = field(default_factory=list)  # as in ThroughputRun


def probe_body(probe: Probe) -> bytes:
    """A patient update of its own probe patient, timestamped now (later than any before)."""
    now = datetime.now(UTC)
    document = {
        "id": probe.event_id,
        "event": PROBE_TYPE,
        "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "data": {
            "patient_id": f"PRB{probe.index:07d}",
            "first_name": "Probe",
            "last_name": "Latency",
            "date_of_birth": "1980-01-01",
            "gender": "F",
            "phone": f"+9197{probe.index:08d}",
        },
    }
    return json.dumps(document, separators=(",", ":")).encode()


async def send_probe(probe: Probe, args: argparse.Namespace) -> None:
    body = probe_body(probe)
    head = (
        f"POST {ENDPOINT} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        f"Content-Type: application/json\r\n{SIGNATURE_HEADER}: {sign(body, args.secret.encode())}"
        f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    writer = None
    probe.sent = time.perf_counter()
    try:
        async with asyncio.timeout(30):
            reader, writer = await asyncio.open_connection(args.host, args.port)
            writer.write(head + body)
            await writer.drain()
            status_line = await reader.readline()
            probe.status = int(status_line.split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
        if 200 <= probe.status < 300:
            probe.acked = time.perf_counter()
        else:
            probe.error = f"HTTP {probe.status}"
    except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError) as error:
        probe.error = _short(error)
    finally:
        if writer is not None:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()


async def wait_for_stream(url: str, stream: str, seconds: float = 30) -> None:
    """Until the server's publisher has created its stream (it does on start)."""
    nc = await _connect(url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + seconds
        while True:
            try:
                await js.stream_info(stream)
                return
            except NotFoundError:
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"the server's publisher did not create {stream} in {seconds:g} s"
                    ) from None
                await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def probe_session(
    run: LatencyRun, prefix: str, database_url: str, pid: int, args: argparse.Namespace
) -> list[Probe]:
    probes = [Probe(i, f"probe-{run.stream[-10:]}-{i:05d}") for i in range(args.probes)]
    by_id = {p.event_id: p for p in probes}
    decoder = msgspec.json.Decoder()
    arrived = asyncio.Event()  # set when a probe's message comes in

    async def on_message(msg: Any) -> None:
        now = time.perf_counter()
        try:
            event_id = decoder.decode(msg.data).get("event_id")
        except (msgspec.DecodeError, AttributeError):
            return
        probe = by_id.get(event_id)
        if probe is not None and probe.received is None:
            probe.received = now
            arrived.set()

    count = functools.partial(stored_events, run.database, database_url)
    nc = await _connect(args.nats_url)
    try:
        js = nc.jetstream()
        # Only the probes' subject: the server filters out the load's events.
        subscription = await js.subscribe(
            f"{prefix}.{PROBE_TYPE}", stream=run.stream, cb=on_message, manual_ack=True,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
        )  # fmt: skip
        if run.load == WRK_LOAD:
            await asyncio.sleep(args.load_warmup)
        stored_before = sum((await asyncio.to_thread(count)).values())
        published_before = (await js.stream_info(run.stream)).state.messages
        cpu_before, machine_before = _process_cpu_seconds(pid), _machine_cpu()
        began = time.perf_counter()
        tasks = []
        for probe in probes:
            delay = began + probe.index * args.probe_interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send_probe(probe, args)))
        await asyncio.gather(*tasks)
        ended = time.perf_counter()
        cpu_after, machine_after = _process_cpu_seconds(pid), _machine_cpu()
        stored_after = sum((await asyncio.to_thread(count)).values())
        published_after = (await js.stream_info(run.stream)).state.messages
        run.window_s = ended - began
        run.server_cpu_pct = 100 * (cpu_after - cpu_before) / run.window_s
        busy, total = (a - b for a, b in zip(machine_after, machine_before, strict=True))
        run.machine_busy_pct = 100 * busy / total if total else float("nan")
        run.stored_in_window = stored_after - stored_before
        run.receiver_events_per_s = run.stored_in_window / run.window_s
        run.published_in_window = published_after - published_before
        run.published_per_s = run.published_in_window / run.window_s
        run.backlog_at_end = stored_after - published_after
        deadline = time.perf_counter() + args.probe_timeout
        while any(p.acked is not None and p.received is None for p in probes):
            arrived.clear()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            with suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), timeout=remaining)
        await subscription.unsubscribe()
    finally:
        await nc.close()
    return probes


def start_wrk(
    wrk: str, events: Path, seconds: float, args: argparse.Namespace
) -> tuple[list[str], subprocess.Popen[str]]:
    """wrk with bench/ingest's script and flags (-t1 -c32 by default), started now, from this
    thread (no other thread runs yet: die_with_parent is safe)."""
    url = f"http://{args.host}:{args.port}{ENDPOINT}"
    command = [
        wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds:g}s",
        f"--timeout={args.timeout:g}s", "--latency", "-s", str(LUA_SCRIPT), url, "--",
        str(events), str(args.threads), "0",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=die_with_parent,
    )  # fmt: skip
    return command, process


def finish_wrk(
    command: list[str], process: subprocess.Popen[str], seconds: float, began: float
) -> WrkRun:
    try:
        stdout, _ = process.communicate(timeout=seconds + 120)
    finally:
        stop(process, grace_seconds=5)
    marker = next((line for line in stdout.splitlines() if line.startswith(RESULT_MARKER)), None)
    if process.returncode != 0 or marker is None:
        raise BenchError(f"wrk failed ({process.returncode}):\n{stdout}")
    result = json.loads(marker.removeprefix(RESULT_MARKER))
    latency = result["latency_us"]
    return WrkRun(
        command=command, requests=result["requests"], duration_s=result["duration_s"],
        requests_per_s=result["requests_per_s"], p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000, p99_ms=latency["p99"] / 1000, max_ms=latency["max"] / 1000,
        ok=result["ok"], non2xx=result["non2xx"], statuses=result["statuses"],
        first_error=result["first_error"], sent=result["sent"], wrapped=result["wrapped"],
        start=result["start"], next_start=result["next_start"],
        socket_errors=result["socket_errors"], wall_s=time.monotonic() - began, stdout=stdout,
    )  # fmt: skip


def latency_run(
    kind: str, load: str, round_number: int, wrk: str, events: Path,
    workdir: Path, streams: list[str], args: argparse.Namespace,
) -> LatencyRun:  # fmt: skip
    label = f"latency-{kind}-{load}-{round_number}"
    stream, prefix = unique_names(f"{kind}_{load}_{round_number}")
    streams.append(stream)
    run = LatencyRun(kind, load, round_number, stream)
    run.loadavg_before = os.getloadavg()
    log = workdir / f"{label}.log"
    try:
        if kind == "postgresql":
            run.pg_open_transactions = pg_open_transactions(args.pg_admin_url)
        database_url = prepare_database(
            "sqlite" if kind == "sqlite" else "postgres", workdir, label, args
        )
        env = service_env(database_url, args)
        env.update(
            HEALTHDOCK_NATS_URL=args.nats_url,
            HEALTHDOCK_NATS_STREAM=stream,
            HEALTHDOCK_NATS_SUBJECT_PREFIX=prefix,
            HEALTHDOCK_NATS_BATCH=str(args.batch),
            HEALTHDOCK_NATS_MAX_AGE_DAYS=str(MAX_AGE_DAYS),
        )
        command = [str(BIN / "healthdock-mirror"), "serve", "--no-scheduler"]
        with running_server(command, env, workdir, args.host, args.port, log) as process:
            asyncio.run(wait_for_stream(args.nats_url, stream))
            wrk_process = None
            wrk_seconds = args.load_warmup + args.probes * args.probe_interval + 2
            if load == WRK_LOAD:
                wrk_began = time.monotonic()
                wrk_command, wrk_process = start_wrk(wrk, events, wrk_seconds, args)
            try:
                probes = asyncio.run(probe_session(run, prefix, database_url, process.pid, args))
            except BaseException:
                if wrk_process is not None:
                    stop(wrk_process, grace_seconds=5)
                raise
            if wrk_process is not None:
                run.wrk = finish_wrk(wrk_command, wrk_process, wrk_seconds, wrk_began)
        run.exit_code = process.returncode
        acked = [p for p in probes if p.acked is not None]
        delivered = [p for p in acked if p.received is not None]
        run.probes, run.acknowledged, run.received = len(probes), len(acked), len(delivered)
        run.latencies_ms = [1000 * (p.received - p.acked) for p in delivered]  # type: ignore[operator]
        http_ms = [1000 * (p.acked - p.sent) for p in acked]  # type: ignore[operator]
        run.latency_p50_ms = _percentile(run.latencies_ms, 0.50)
        run.latency_p99_ms = _percentile(run.latencies_ms, 0.99)
        run.latency_max_ms = max(run.latencies_ms, default=float("nan"))
        run.latency_min_ms = min(run.latencies_ms, default=float("nan"))
        run.http_p50_ms = _percentile(http_ms, 0.50)
        run.http_p99_ms = _percentile(http_ms, 0.99)
        run.probe_errors = sorted({p.error for p in probes if p.error})
        problems = []
        if run.acknowledged < run.probes:
            problems.append(f"{run.probes - run.acknowledged} probes not acknowledged")
        if run.received < run.acknowledged:
            problems.append(
                f"{run.acknowledged - run.received} acknowledged probes never reached the "
                f"consumer within {args.probe_timeout:g} s"
            )
        if run.wrk is not None and run.wrk.wrapped:
            problems.append("wrk ran out of events and repeated some (raise --max-rate)")
        run.error = "; ".join(problems)
        run.ok = not problems
    except (BenchError, NatsError, OSError, TimeoutError, psycopg.Error) as error:
        run.ok, run.error = False, _short(error)
    except Exception as error:  # reported, never dropped
        run.ok, run.error = False, f"unexpected {_short(error)}"
    finally:
        with suppress(OSError):
            run.log_problems = [
                line for line in log.read_text(errors="replace").splitlines()
                if any(p in line for p in LOG_PROBLEMS)
            ]  # fmt: skip
        with suppress(NatsError, OSError, TimeoutError):
            if not asyncio.run(delete_streams(args.nats_url, [stream])):
                streams.remove(stream)
    return run


def latency_part(
    kind: str, wrk: str, events: Path, workdir: Path, args: argparse.Namespace,
    runs: list[LatencyRun], streams: list[str],
) -> None:  # fmt: skip
    for round_number in range(1, args.latency_rounds + 1):
        loads = [NO_LOAD, WRK_LOAD]
        for load in loads if round_number % 2 else reversed(loads):
            run = latency_run(kind, load, round_number, wrk, events, workdir, streams, args)
            runs.append(run)
            receiver = f"{run.receiver_events_per_s:.0f} events/s stored"
            if run.wrk is not None:
                receiver += f" (wrk {run.wrk.requests_per_s:.0f} req/s, non-2xx {run.wrk.non2xx})"
            print(
                f"{kind} latency, load {load}: p50 {run.latency_p50_ms:.1f} ms, "
                f"p99 {run.latency_p99_ms:.1f} ms, max {run.latency_max_ms:.1f} ms over "
                f"{run.received}/{run.probes} probes; {receiver}, "
                f"{run.published_per_s:.0f} published/s; "
                + ("ok" if run.ok else f"FAILED: {run.error}"),
                flush=True,
            )
            for line in run.log_problems[:3]:
                print(f"  server log: {line[:200]}", flush=True)


def summarize_latency(runs: Sequence[LatencyRun], databases: Sequence[str]) -> list[dict[str, Any]]:
    """Pooled over the rounds of each database and load: every probe counts once."""
    rows = []
    for kind in databases:
        for load in (NO_LOAD, WRK_LOAD):
            those = [r for r in runs if r.database == kind and r.load == load]
            if not those:
                continue
            latencies = [ms for r in those for ms in r.latencies_ms]
            rows.append(
                {
                    "database": kind,
                    "load": load,
                    "runs": len(those),
                    "failed": sum(1 for r in those if not r.ok),
                    "probes": sum(r.probes for r in those),
                    "acknowledged": sum(r.acknowledged for r in those),
                    "received": sum(r.received for r in those),
                    "p50_ms": _percentile(latencies, 0.50),
                    "p99_ms": _percentile(latencies, 0.99),
                    "max_ms": max(latencies, default=float("nan")),
                    "http_p50_ms": _median([r.http_p50_ms for r in those]),
                    "receiver_events_per_s": _median([r.receiver_events_per_s for r in those]),
                    "published_per_s": _median([r.published_per_s for r in those]),
                    "backlog_at_end": max((r.backlog_at_end or 0) for r in those),
                    "server_cpu_pct": _median([r.server_cpu_pct for r in those]),
                    "machine_busy_pct": _median([r.machine_busy_pct for r in those]),
                    "log_problems": sum(len(r.log_problems) for r in those),
                }
            )
    return rows


# --- report -------------------------------------------------------------------------------


def _table(header: Sequence[str], align: str, body: Sequence[Sequence[object]]) -> list[str]:
    rule = ["---:" if a == "r" else "---" for a in align]
    lines: list[Sequence[object]] = [header, rule, *body]
    return ["| " + " | ".join(str(cell) for cell in line) + " |" for line in lines]


def _num(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:{spec}}{suffix}"


def throughput_markdown(
    rows: Sequence[dict[str, Any]], runs: Sequence[ThroughputRun], args: argparse.Namespace
) -> str:
    body = [
        [
            r["database"], r["variant"], f"{r['rounds'] - r['failed']}/{r['rounds']}",
            _num(r["median_events_per_s"]), _num(r["median_seconds"], ".2f"),
            _num(r["vs_bare"], ".0%"), _num(r["vs_bare_headers"], ".0%"), r["log_problems"],
        ]
        for r in rows
    ]  # fmt: skip
    header = [
        "database", "variant", "rounds ok", "median events/s", "median s",
        "publisher/bare", "publisher/bare+headers", "log warnings",
    ]  # fmt: skip
    lines = [
        f"### Throughput: {args.events} events, batches of {args.batch}",
        "",
        *_table(header, "llrrrrrr", body),
        "",
        "Per round:",
        "",
        *_table(
            ["database", "round", "variant", "events/s", "seconds", "published", "batches",
             "refused", "realigned", "result"],
            "lrlrrrrrrl",
            [
                [r.database, r.round, r.variant, _num(r.events_per_s), _num(r.seconds, ".2f"),
                 r.published, r.batches, r.refused, r.realigned,
                 "ok" if r.ok else f"FAILED: {r.error[:120]}"]
                for r in runs
            ],
        ),
        *_held_note(runs),
    ]  # fmt: skip
    return "\n".join(lines)


def latency_markdown(
    rows: Sequence[dict[str, Any]], runs: Sequence[LatencyRun], args: argparse.Namespace
) -> str:
    body = [
        [
            r["database"], r["load"] if r["load"] == NO_LOAD else f"wrk -c{args.connections}",
            f"{r['received']}/{r['acknowledged']}/{r['probes']}", _num(r["p50_ms"], ".1f"),
            _num(r["p99_ms"], ".1f"), _num(r["max_ms"], ".1f"), _num(r["http_p50_ms"], ".1f"),
            _num(r["receiver_events_per_s"]), _num(r["published_per_s"]), r["backlog_at_end"],
            _num(r["server_cpu_pct"], ".0f", "%"), _num(r["machine_busy_pct"], ".0f", "%"),
            "ok" if not r["failed"] else f"{r['failed']} FAILED",
        ]
        for r in rows
    ]  # fmt: skip
    header = [
        "database", "load", "received/2xx/sent", "p50 (ms)", "p99 (ms)", "max (ms)",
        "probe 2xx p50 (ms)", "receiver events/s", "published/s", "backlog at end",
        "server CPU", "machine busy", "result",
    ]  # fmt: skip
    lines = [
        f"### Latency: webhook 2xx -> JetStream consumer, {args.probes} probes every "
        f"{args.probe_interval * 1000:g} ms",
        "",
        *_table(header, "llrrrrrrrrrrl", body),
    ]
    for r in runs:
        if not r.ok:
            lines.append(f"- FAILED {r.database}/{r.load} round {r.round}: {r.error[:300]}")
        if r.log_problems:
            lines.append(
                f"- NOTE {r.database}/{r.load} round {r.round}: {len(r.log_problems)} "
                f"warning/error line(s) in the server log, first: {r.log_problems[0][:200]}"
            )
    if args.probes < 200:
        lines.append(f"- only {args.probes} probes per run: p99 means little below 200")
    lines.extend(_held_note(runs))
    return "\n".join(lines)


def _held_note(runs: Sequence[ThroughputRun | LatencyRun]) -> list[str]:
    held = [r for r in runs if r.pg_open_transactions]
    if not held:
        return []
    return [
        f"- NOTE: {len(held)} PostgreSQL run(s) began with transactions open elsewhere on the "
        "server, which hold the feed's horizon back (see pg_open_transactions in the JSON)"
    ]


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.publish.run",
        description="The change feed's publisher to NATS JetStream: throughput against a bare "
        "nats-py loop, and webhook-to-consumer latency with and without load.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--databases", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql"
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated: throughput, latency"
    )
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds per database")
    parser.add_argument(
        "--events", type=int, default=50_000, help="events in the event log (throughput)"
    )
    parser.add_argument(
        "--batch", type=int, default=Settings.model_fields["nats_batch"].default,
        help="HEALTHDOCK_NATS_BATCH for the publisher, and the bare loops' batch",
    )  # fmt: skip
    parser.add_argument(
        "--no-headers-baseline", action="store_true",
        help="skip the bare loop that also sends the publisher's three headers",
    )  # fmt: skip
    parser.add_argument(
        "--round-timeout", type=float, default=180, help="seconds a throughput run may take"
    )
    parser.add_argument(
        "--latency-rounds", type=int, default=2, help="latency runs per database and load"
    )
    parser.add_argument("--probes", type=int, default=300, help="probe webhooks per latency run")
    parser.add_argument("--probe-interval", type=float, default=0.05, help="seconds between probes")
    parser.add_argument(
        "--probe-timeout", type=float, default=20,
        help="seconds to wait, after the last probe's 2xx, for probes still on their way",
    )  # fmt: skip
    parser.add_argument(
        "--load-warmup", type=float, default=3, help="seconds of wrk load before the first probe"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (-t)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (-c)")
    parser.add_argument(
        "--timeout", type=float, default=10, help="wrk's request timeout in seconds"
    )
    parser.add_argument(
        "--max-rate", type=int, default=10_000,
        help="highest req/s expected from the receiver; sizes wrk's events file",
    )  # fmt: skip
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8160, help="port for the receiver")
    parser.add_argument(
        "--secret", default="secret", help="webhook secret for the server and the signatures"
    )
    parser.add_argument(
        "--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/test",
        help="PostgreSQL URL allowed to drop and create --pg-database",
    )  # fmt: skip
    parser.add_argument(
        "--pg-database", default="bench_publish", help="throwaway database, recreated for each use"
    )
    parser.add_argument(
        "--workdir", type=Path, help="SQLite files, logs and wrk's events (default: a temp dir)"
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep the work dir afterwards")
    parser.add_argument("--results", type=Path, default=RESULTS, help="directory for the results")
    args = parser.parse_args(argv)
    args.database_list = [
        "postgresql" if d.strip() == "postgres" else d.strip()
        for d in args.databases.split(",")
        if d.strip()
    ]
    unknown = set(args.database_list) - set(DATABASES)
    if unknown or not args.database_list:
        parser.error(f"--databases: unknown {sorted(unknown)}; use sqlite and/or postgresql")
    args.part_list = [p.strip() for p in args.parts.split(",") if p.strip()]
    if set(args.part_list) - set(PARTS) or not args.part_list:
        parser.error("--parts: use throughput and/or latency")
    if args.rounds < 1 or args.events < 1 or args.probes < 1 or args.latency_rounds < 1:
        parser.error("need --rounds, --events, --probes and --latency-rounds >= 1")
    if not 1 <= args.batch <= MAX_LIMIT:
        parser.error(f"--batch: between 1 and {MAX_LIMIT}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    unwind_on_signals()
    command_line = shlex.join(
        [sys.executable, "-m", "bench.publish.run", *(argv if argv is not None else sys.argv[1:])]
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-publish-"))
    workdir.mkdir(parents=True, exist_ok=True)
    environment: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nats_py": importlib.metadata.version("nats-py"),
        "loadavg_at_start": os.getloadavg(),
    }
    throughput_runs: list[ThroughputRun] = []
    latency_runs: list[LatencyRun] = []
    feeds: list[Feed] = []
    streams: list[str] = []  # ours, not yet deleted
    part_failures: list[str] = []
    interrupted = False
    failure: str | None = None
    try:

        async def server_version() -> str:
            nc = await _connect(args.nats_url)
            try:
                await nc.jetstream().account_info()  # JetStream must be on
                return str(nc.connected_server_version)
            finally:
                await nc.close()

        environment["nats_server"] = asyncio.run(server_version())
        if "postgresql" in args.database_list:
            environment["postgres"] = pg_settings(args.pg_admin_url)
        if "throughput" in args.part_list:
            for kind in args.database_list:
                try:
                    throughput_part(kind, workdir, args, throughput_runs, feeds, streams)
                except (BenchError, DatabaseUnavailable, psycopg.Error) as error:
                    # This database's part failed as a whole: said so, and the rest goes on.
                    part_failures.append(f"throughput on {kind}: {_short(error)}")
                    print(f"FAILED: {part_failures[-1]}", file=sys.stderr, flush=True)
        if "latency" in args.part_list:
            wrk = ensure_wrk()
            version = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
            environment["wrk"] = (version.stdout.splitlines() or ["?"])[0]
            events = workdir / "events.tsv"
            seconds = args.load_warmup + args.probes * args.probe_interval + 2
            count = int(args.max_rate * seconds * 1.2) + 4 * args.connections
            print(f"generating {count} signed events for wrk in {events} ...", flush=True)
            write_events(events, count, args.secret.encode())
            environment["wrk_events_file_lines"] = count
            for kind in args.database_list:
                latency_part(kind, wrk, events, workdir, args, latency_runs, streams)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; reporting the runs that finished", file=sys.stderr)
    except (BenchError, NatsError, OSError, TimeoutError, psycopg.Error) as error:
        failure = _short(error)
        print(f"\nbenchmark stopped: {failure}", file=sys.stderr)
    finally:
        left: list[str] = list(streams)
        with suppress(NatsError, OSError, TimeoutError):
            left = asyncio.run(delete_streams(args.nats_url, streams))
        if left:
            print(f"could not delete these JetStream streams of ours: {left}", file=sys.stderr)
        if "postgresql" in args.database_list:
            with suppress(psycopg.Error):
                drop_pg_database(args.pg_admin_url, args.pg_database)
        if not args.keep_workdir and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    throughput_rows = summarize_throughput(throughput_runs, args.database_list)
    latency_rows = summarize_latency(latency_runs, args.database_list)
    sections = [f"Command: `{command_line}`"]
    if throughput_runs:
        sections.append(throughput_markdown(throughput_rows, throughput_runs, args))
    if latency_runs:
        wrk_run = next((r.wrk for r in latency_runs if r.wrk is not None), None)
        if wrk_run is not None:
            sections.append("wrk: `" + shlex.join(wrk_run.command) + "`")
        sections.append(latency_markdown(latency_rows, latency_runs, args))
    sections.extend(f"**FAILED:** {problem}" for problem in part_failures)
    if failure:
        sections.append(f"**Stopped early:** {failure}")
    if interrupted:
        sections.append("**Interrupted:** only the runs above finished.")
    report = "\n\n".join(sections)
    print()
    print(report)

    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.results / f"publish-{stamp}.json"
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out.write_text(
        json.dumps(
            {
                "command": command_line,
                "settings": settings,
                "environment": environment,
                "interrupted": interrupted,
                "failure": failure,
                "part_failures": part_failures,
                "feeds": [asdict(f) for f in feeds],
                "throughput": {
                    "summary": throughput_rows,
                    "runs": [asdict(r) for r in throughput_runs],
                },
                "latency": {"summary": latency_rows, "runs": [asdict(r) for r in latency_runs]},
            },
            indent=2,
        )
        + "\n"
    )
    (args.results / f"publish-{stamp}.md").write_text(report + "\n")
    print(f"\nresults: {out} and {out.with_suffix('.md')}")
    if interrupted:
        return 130
    failed = any(not r.ok for r in throughput_runs) or any(not r.ok for r in latency_runs)
    return 1 if failure or part_failures or failed else 0


if __name__ == "__main__":
    sys.exit(main())
