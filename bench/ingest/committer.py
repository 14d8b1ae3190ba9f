"""The committer's share of ingest, alone: ``mirror.ingest`` on batches of a given size.

What one committer can store and apply per second with the whole machine to itself, and what
each event costs it in CPU: this process's (the committer's work: SQLAlchemy, the driver, our
writers and SQLite itself) and, on PostgreSQL, the database server's (every process of the
cluster, read from /proc: the backend and the WAL writer). No HTTP, no receiver: the events are
parsed before the clock starts, as the receiver parses them before they reach the committer.

The receiver keeps one batch in flight, so with wrk's 32 connections a batch holds at most 32
events (about 20 on average, since the next batch fills while one commits): this table says
how fast ingest can go at such sizes before the server, wrk and the database share two cores.

    .venv/bin/python -m bench.ingest.committer                      # both databases
    .venv/bin/python -m bench.ingest.committer --databases sqlite --sizes 16,32

Run it on an otherwise idle machine: the PostgreSQL figure counts the whole server's CPU.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, func, select

from bench.databases import pg_service_url, recreate_pg_database
from bench.ingest.events import event_body
from bench.processes import process_cpu_seconds
from mirror import (
    EventSource,
    IncomingEvent,
    create_mirror_engine,
    dedup_key,
    ingest,
    read_event,
    read_transaction,
    upgrade,
)
from mirror.schema import webhook_events

DATABASES = ("sqlite", "postgres")
# What a webhook's stored headers look like after storable_headers (the receiver's).
_HEADERS = [("host", "127.0.0.1:8150"), ("content-type", "application/json")]


@dataclass(frozen=True, slots=True)
class Measurement:
    database: str
    batch_size: int
    round: int
    events: int
    wall_s: float
    committer_cpu_s: float
    database_cpu_s: float | None  # PostgreSQL's processes; None on SQLite (it is in ours)

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--databases", default=",".join(DATABASES), help="comma-separated")
    parser.add_argument("--sizes", default="4,16,32,64,256", help="batch sizes, comma-separated")
    parser.add_argument("--events", type=int, default=10_240, help="events per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per size (median)")
    parser.add_argument(
        "--prefill", type=int, default=40_000,
        help="events stored (256 a batch, unmeasured) before each measurement: the tables' "
        "size decides what an index insert costs, and bench/ingest's last run starts about here",
    )  # fmt: skip
    parser.add_argument(
        "--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL URL allowed to drop and create --pg-database",
    )  # fmt: skip
    parser.add_argument("--pg-database", default="bench_committer", help="throwaway database")
    args = parser.parse_args(argv)
    args.databases = [name.strip() for name in args.databases.split(",") if name.strip()]
    unknown = set(args.databases) - set(DATABASES)
    if unknown:
        parser.error(f"unknown database(s): {', '.join(sorted(unknown))}")
    args.sizes = [int(size) for size in args.sizes.split(",")]
    if any(size < 1 for size in args.sizes) or args.events < 1 or args.rounds < 1:
        parser.error("--sizes, --events and --rounds must be positive")
    if args.prefill < 0:
        parser.error("--prefill cannot be negative")
    return args


def incoming_events(count: int, *, seed: int = 1) -> list[IncomingEvent]:
    """Distinct events as the receiver hands them on: verified, parsed, with their headers."""
    rng = random.Random(seed)  # repeatable bodies, as bench/ingest/events.py writes them
    items = []
    for number in range(count):
        body = event_body(number, rng)
        event = read_event(body)
        items.append(
            IncomingEvent(
                EventSource.WEBHOOK, dedup_key(event.event_id, body), event, body,
                list(_HEADERS), datetime.now(UTC), None,
            )
        )  # fmt: skip
    return items


def postgres_cpu_s() -> float:
    """CPU seconds (user + system) of every PostgreSQL process on this machine."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue  # it ended while we looked
        total += process_cpu_seconds(int(pid))
    return total


def stored(engine: Engine) -> int:
    return read_transaction(
        engine, lambda c: c.execute(select(func.count()).select_from(webhook_events)).scalar_one()
    )


def measure(
    database: str,
    url: str,
    batch_size: int,
    round_number: int,
    items: Sequence[IncomingEvent],
    prefill: int = 0,
) -> Measurement:
    """Ingest ``items`` into the empty, migrated database at ``url``: the first ``prefill``
    256 at a time, unmeasured, then the rest ``batch_size`` at a time."""
    engine = create_mirror_engine(url, key_lookups_only=True)  # as the committer's is
    try:
        for start in range(0, prefill, 256):
            ingest(engine, items[start : min(start + 256, prefill)])
        # The first batch warms the statements for this size: not measured.
        ingest(engine, items[prefill : prefill + batch_size])
        rest = items[prefill + batch_size :]
        batches = [rest[i : i + batch_size] for i in range(0, len(rest), batch_size)]
        postgres = database == "postgres"
        database_before = postgres_cpu_s() if postgres else 0.0
        cpu_before, started = time.process_time(), time.perf_counter()
        for batch in batches:
            ingest(engine, batch)
        wall = time.perf_counter() - started
        committer_cpu = time.process_time() - cpu_before
        database_cpu = postgres_cpu_s() - database_before if postgres else None
        count = stored(engine)
        if count != len(items):
            raise RuntimeError(f"{database}: {count} events stored of {len(items)}")
    finally:
        engine.dispose()
    return Measurement(
        database, batch_size, round_number, len(rest), wall, committer_cpu, database_cpu
    )


def run(args: argparse.Namespace, workdir: Path) -> list[Measurement]:
    results = []
    for size in args.sizes:
        # One size's rounds in turn for each database, so that drift hits both alike.
        for round_number in range(1, args.rounds + 1):
            items = incoming_events(args.prefill + size + args.events)
            for database in args.databases:
                if database == "sqlite":
                    path = workdir / f"committer-{size}-{round_number}.db"
                    url = f"sqlite:///{path}"
                else:
                    recreate_pg_database(args.pg_admin_url, args.pg_database)
                    url = pg_service_url(args.pg_admin_url, args.pg_database)
                migrating = create_mirror_engine(url)
                upgrade(migrating)
                migrating.dispose()
                results.append(measure(database, url, size, round_number, items, args.prefill))
                print(_progress(results[-1]), flush=True)
    return results


def _progress(m: Measurement) -> str:
    return (
        f"{m.database} batch {m.batch_size} round {m.round}: {m.events_per_s:,.0f} events/s, "
        f"{1e6 * m.committer_cpu_s / m.events:.0f} us committer CPU/event"
    )


def report(results: Sequence[Measurement]) -> str:
    """The Markdown table: medians over the rounds of each database and batch size."""
    lines = [
        "| database | batch | events/s alone | ms per batch | committer CPU per event "
        "| PostgreSQL CPU per event |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    keys = sorted({(m.database, m.batch_size) for m in results}, key=lambda k: (k[0], k[1]))
    for database, size in keys:
        group = [m for m in results if (m.database, m.batch_size) == (database, size)]
        rate = statistics.median(m.events_per_s for m in group)
        committer = statistics.median(1e6 * m.committer_cpu_s / m.events for m in group)
        server = [1e6 * m.database_cpu_s / m.events for m in group if m.database_cpu_s is not None]
        lines.append(
            f"| {database} | {size} | {rate:,.0f} | {1000 * size / rate:.2f} "
            f"| {committer:.0f} µs | {f'{statistics.median(server):.0f} µs' if server else '—'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-committer-") as workdir:
        results = run(args, Path(workdir))
    print()
    print(report(results))


if __name__ == "__main__":
    main()
