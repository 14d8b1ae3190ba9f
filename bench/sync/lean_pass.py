"""The leanest no-change pass this stack allows: what ``bench/sync/floor.py`` sets ours against.

A pass over a mirror that already holds every patient, nothing changed upstream, doing only
the work no reconciler can skip: fetch every page (16 in flight, 100 records a page), decode
it, compute each record's version exactly as the ordering guard does (the instant, the action
and the SHA-256 of the canonical content), read the stored versions of the page's ids, and
mark the unchanged records as seen by the pass, ten pages a transaction, with our SQLite
settings (WAL, ``synchronous=FULL``, a 16 MiB cache) or, on PostgreSQL, the rows locked as
our guard locks them. No lease, no run row, no progress, no retries, no pacing, no logging.

It imports nothing of the project (SQLAlchemy, pydantic and the rest would be start-up it
skips): the version is written out again below. A version that differed from the mirror's
would count every record as changed, and the runner refuses a run that reports a change.

    python bench/sync/lean_pass.py --base-url http://127.0.0.1:8251 --api-key fake-api-key \\
        --database sqlite:////tmp/x.db --client aiohttp

``--client httpx`` fetches with httpx's default transport instead, to show the HTTP client's
share; ``--startup-only`` imports what the pass needs and exits (its start-up CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

RESULT_MARKER = "BENCH_RESULT "  # bench/processes.py's; this script imports nothing of ours
PAGE_SIZE = 100
PAGES_PER_TRANSACTION = 10  # sync/mark.py's
CLIENTS = ("aiohttp", "httpx")
_UPDATE_RANK = 1  # mirror.states.Action.UPDATE: a listed record is an update

_SQLITE_READ = (
    "SELECT id, content_version FROM patients WHERE id IN (SELECT value FROM json_each(?))"
)
# mirror.records' marks: which pass listed each record, in listed_records.
_SQLITE_MARK = (
    "INSERT INTO listed_records (resource, record_id, run_id) SELECT 'patient', value, ? "
    "FROM json_each(?) WHERE true ON CONFLICT (resource, record_id) DO UPDATE SET run_id = "
    "excluded.run_id"
)
_PG_IDS = "ANY(ARRAY(SELECT json_array_elements_text(%s::json)))"
_PG_READ = f"SELECT id, content_version FROM patients WHERE id = {_PG_IDS} FOR UPDATE"
_PG_MARK = (
    "INSERT INTO listed_records (resource, record_id, run_id) SELECT 'patient', value, "
    "%s::bigint FROM json_array_elements_text(%s::json) AS value ON CONFLICT (resource, "
    "record_id) DO UPDATE SET run_id = excluded.run_id"
)

_canonical = msgspec.json.Encoder(order="sorted")

Records = list[dict[str, Any]]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="the fake's root, without /v1")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--database", required=True, help="sqlite:///PATH or postgresql://...")
    parser.add_argument("--client", choices=CLIENTS, default="aiohttp")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--startup-only", action="store_true")
    return parser.parse_args(argv)


def version_of(record: dict[str, Any]) -> str:
    """The mirror's version key of a listed patient (``mirror.events.record_write``)."""
    content = dict(record)
    record_id = str(content.pop("id"))
    content.pop("patient_id", None)
    digest = hashlib.sha256(_canonical.encode([record_id, content])).hexdigest()
    listed = record.get("updated_at") or record.get("created_at")
    moment = datetime.fromisoformat(listed).astimezone(UTC)
    seconds = moment.replace(microsecond=0).isoformat(timespec="seconds")[:19]
    return f"{seconds}.{moment.microsecond * 1000:09d}Z|{_UPDATE_RANK}|{digest}"


class Mirror:
    """The two statements a page needs, on the driver itself."""

    def __init__(self, url: str) -> None:
        self.postgres = url.startswith("postgresql")
        if self.postgres:
            import psycopg

            self._pg = psycopg.connect(url)
        else:
            import sqlite3

            path = url.removeprefix("sqlite:///")
            self._lite = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "cache_size=-16384"):
                self._lite.execute(f"PRAGMA {pragma}")
        # The last pass's id: marking with it writes every row as a pass would, and leaves
        # the next real pass's sweep what it would have found.
        self.run_id = int(self._one("SELECT max(run_id) FROM listed_records") or 0)

    def _one(self, sql: str) -> object:
        if self.postgres:
            row = self._pg.execute(sql).fetchone()
            self._pg.commit()
        else:
            row = self._lite.execute(sql).fetchone()
        return row[0] if row else None

    def apply(self, pages: Sequence[Records]) -> tuple[int, int]:
        """(records, changed) of ``pages``, in one transaction."""
        records = changed = 0
        if not self.postgres:
            self._lite.execute("BEGIN IMMEDIATE")
        for page in pages:
            versions = {str(record["id"]): version_of(record) for record in page}
            ids = msgspec.json.encode(list(versions)).decode()
            if self.postgres:
                stored = dict(self._pg.execute(_PG_READ, (ids,)).fetchall())
            else:
                stored = dict(self._lite.execute(_SQLITE_READ, (ids,)).fetchall())
            same = [key for key, version in versions.items() if stored.get(key) == version]
            records += len(versions)
            changed += len(versions) - len(same)
            marked = msgspec.json.encode(same).decode()
            if self.postgres:
                self._pg.execute(_PG_MARK, (self.run_id, marked))
            else:
                self._lite.execute(_SQLITE_MARK, (self.run_id, marked))
        if self.postgres:
            self._pg.commit()
        else:
            self._lite.execute("COMMIT")
        return records, changed


Fetch = Callable[[int], Awaitable[tuple[Records, int]]]


async def lean_pass(args: argparse.Namespace, mirror: Mirror) -> dict[str, int]:
    url = args.base_url.rstrip("/") + "/v1/patients"
    headers = {"Authorization": f"Bearer {args.api_key}", "Accept": "application/json"}

    def page_of(body: bytes) -> tuple[Records, int]:
        data = msgspec.json.decode(body)["data"]
        return data["patients"], int(data["pagination"]["total_pages"])

    if args.client == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(limit=args.concurrency)
        )

        async def fetch(number: int) -> tuple[Records, int]:
            params = {"page": str(number), "limit": str(PAGE_SIZE)}
            async with session.get(url, params=params) as response:
                response.raise_for_status()
                return page_of(await response.read())

        close = session.close
    else:
        import httpx

        client = httpx.AsyncClient(
            headers=headers, limits=httpx.Limits(max_connections=args.concurrency)
        )

        async def fetch(number: int) -> tuple[Records, int]:
            response = await client.get(url, params={"page": number, "limit": PAGE_SIZE})
            response.raise_for_status()
            return page_of(response.content)

        close = client.aclose
    try:
        return await _pages(fetch, mirror, args.concurrency)
    finally:
        await close()


async def _pages(fetch: Fetch, mirror: Mirror, concurrency: int) -> dict[str, int]:
    first, total = await fetch(1)
    numbers = iter(range(2, total + 1))
    fetched: asyncio.Queue[Records] = asyncio.Queue(maxsize=2 * concurrency)
    counts = {"pages": 0, "records": 0, "changed": 0}

    async def fetcher() -> None:
        for number in numbers:
            await fetched.put((await fetch(number))[0])

    async def writer() -> None:
        waiting = [first]
        while counts["pages"] < total:
            if not waiting:
                waiting.append(await fetched.get())
            while len(waiting) < PAGES_PER_TRANSACTION and not fetched.empty():
                waiting.append(fetched.get_nowait())
            records, changed = await asyncio.to_thread(mirror.apply, waiting)
            counts["pages"] += len(waiting)
            counts["records"] += records
            counts["changed"] += changed
            waiting = []

    await asyncio.gather(writer(), *(fetcher() for _ in range(concurrency)))
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.startup_only:
        # What a pass imports before its first request.
        if args.client == "aiohttp":
            import aiohttp  # noqa: F401
        else:
            import httpx  # noqa: F401
        if args.database.startswith("postgresql"):
            import psycopg  # noqa: F401
        else:
            import sqlite3  # noqa: F401
        return 0
    counts = asyncio.run(lean_pass(args, Mirror(args.database)))
    print(RESULT_MARKER + json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
