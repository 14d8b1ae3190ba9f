"""The reconciler against a HealthDock that fails in every way at once while its data changes.

5xx answers, dropped connections, truncated bodies, latency spikes past the client's timeout,
429 storms and page drift, all switched on together, on a real loopback socket, while
HealthDock's staff create, update and delete records. Over several syncs: the mirror never
tombstones a record HealthDock still has (checked after every pass), every run's outcome and
counts are recorded in ``sync_runs``, and two clean syncs after the faults stop make the
mirror equal to HealthDock (an appointment is tombstoned by the second pass that misses it).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from fake_healthdock import FakeHealthDock, Faults, serve_in_thread
from mirror.events import Resource
from mirror.schema import appointments, patients, sync_runs
from sync import PassOptions, PassResult, reconcile
from sync.client import HealthDockClient
from tests.sync.conftest import API_KEY as UPSTREAM_API_KEY
from tests.sync.conftest import Upstream, mirror_of, truth_of

API_KEY = "faults-api-key"
# Attempts per request in each faulty sync: with 2, some passes give up and end incomplete.
FAULTY_SYNC_ATTEMPTS = (8, 2, 8, 2, 8, 2)
# Every fault at once. Spikes outlast the client's timeout; storms are 429s whatever our
# budget (another client of the account used the window up).
ALL_FAULTS = Faults(
    error_rate=0.08,
    reset_rate=0.05,
    truncate_rate=0.05,
    drift_rate=0.1,
    spike_rate=0.03,
    spike_seconds=0.6,
    storm_rate=0.02,
    storm_seconds=0.4,
)
CLIENT_TIMEOUT_SECONDS = 0.3
# Small pages, several in flight: many requests per pass, so drift shifts pages under it.
OPTIONS = PassOptions(page_size=25, concurrency=4, mass_delete_floor=100)
MUTATION_INTERVAL_SECONDS = 0.01
ENDINGS = {"success", "incomplete", "held"}


@pytest.fixture
def healthdock() -> Iterator[tuple[FakeHealthDock, str]]:
    fake = FakeHealthDock(
        seed=11,
        patients=300,
        appointments_per_patient=1.5,
        api_key=API_KEY,
        rate_limit=400,
        window_seconds=1.0,
    )
    with serve_in_thread(fake) as base_url:
        yield fake, base_url


def test_all_faults_at_once_no_false_tombstone_and_convergence(
    engine: Engine, healthdock: tuple[FakeHealthDock, str]
) -> None:
    fake, base_url = healthdock
    CHANGES.clear()
    results: list[PassResult] = []
    fake.faults = ALL_FAULTS
    for attempts in FAULTY_SYNC_ATTEMPTS:
        results += asyncio.run(sync_while_staff_work(fake, base_url, engine, attempts=attempts))
    fake.faults = Faults()
    wait_until_held_requests_finish(fake)  # a spiked list request can still drift the data
    # Two clean syncs: an appointment is tombstoned only by the second complete pass that
    # misses it (once could be page drift), so deletions the faulty syncs left need both.
    clean = asyncio.run(sync_while_staff_work(fake, base_url, engine, staff_work=False))
    clean += asyncio.run(sync_while_staff_work(fake, base_url, engine, staff_work=False))
    results += clean

    assert [r.outcome for r in clean] == ["success"] * 4, [r.error for r in clean]
    for resource in Resource:
        assert mirror_of(engine, resource) == truth_of(fake, resource)
    runs = recorded_runs(engine)
    assert [run.id for run in runs] == sorted({r.run_id for r in results})
    assert_plausible(runs, results, fake)
    stats = fake.stats
    # Every fault was met, on both resources' passes together.
    assert min(stats.errors, stats.resets, stats.truncated, stats.drifted, stats.spikes) > 0
    assert stats.storms > 0
    outcomes = [r.outcome for r in results]
    assert "incomplete" in outcomes  # given up passes were met, and recorded as such
    deletes = sum(change.endswith(".deleted") for change in CHANGES)
    print(
        f"\nupstream faults ({engine.dialect.name}): {len(results)} passes "
        f"{ {o: outcomes.count(o) for o in sorted(set(outcomes))} }; injected: "
        f"{stats.errors} 5xx, {stats.resets} resets, {stats.truncated} truncated, "
        f"{stats.spikes} spikes, {stats.storms} storms ({stats.stormed} 429s), "
        f"{stats.drifted} drifts, of {stats.requests} requests; {len(CHANGES)} changes by staff "
        f"({deletes} deletes); tombstoned {sum(r.tombstoned for r in results)}, false: 0"
    )


async def sync_while_staff_work(
    fake: FakeHealthDock,
    base_url: str,
    engine: Engine,
    *,
    attempts: int = 8,
    staff_work: bool = True,
) -> list[PassResult]:
    """One sync (a pass per resource, one client, as ``healthdock-mirror sync`` runs them)
    while HealthDock's data changes; no false tombstone after either pass."""
    results = []
    async with contextlib.AsyncExitStack() as stack:
        if staff_work:
            await stack.enter_async_context(staff_changing_records(base_url))
        client = await stack.enter_async_context(
            HealthDockClient(
                f"{base_url}/v1",
                API_KEY,
                timeout_seconds=CLIENT_TIMEOUT_SECONDS,
                attempts=attempts,
                max_backoff_seconds=0.05,
            )
        )
        for resource in Resource:
            result = await reconcile(engine, client, resource, OPTIONS)
            results.append(result)
            assert result.outcome in ENDINGS, result
            assert not false_tombstones(engine, fake), result
    return results


CHANGES: list[str] = []  # event types of the changes staff made (see the summary line)


@contextlib.asynccontextmanager
async def staff_changing_records(base_url: str) -> Any:
    """Random creates, updates and deletes, through the fake's control endpoint (so they run
    on its own thread, between its API requests), until the block ends."""

    async def change() -> None:
        async with httpx.AsyncClient(base_url=base_url) as control:
            while True:
                answer = await control.post("/_fake/mutate", json={"count": 1})
                assert answer.status_code == 200
                CHANGES.extend(c["event"] for c in answer.json()["data"]["changes"])
                await asyncio.sleep(MUTATION_INTERVAL_SECONDS)

    task = asyncio.create_task(change())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def false_tombstones(engine: Engine, fake: FakeHealthDock) -> set[str]:
    """Records tombstoned in the mirror that HealthDock still has (none ever come back: a
    record HealthDock has now was never deleted)."""
    found = set()
    for resource, table in ((Resource.PATIENT, patients), (Resource.APPOINTMENT, appointments)):
        with engine.connect() as connection:
            tombstoned = connection.execute(
                select(table.c.id).where(table.c.deleted_at.is_not(None))
            ).scalars()
            lookup = fake.patient if resource is Resource.PATIENT else fake.appointment
            found |= {record_id for record_id in tombstoned if lookup(record_id) is not None}
    return found


def wait_until_held_requests_finish(fake: FakeHealthDock, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while fake.stats.finished < fake.stats.requests:
        assert time.monotonic() < deadline, "the fake still holds requests"
        time.sleep(0.02)


def recorded_runs(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(select(sync_runs).order_by(sync_runs.c.id)))


def assert_plausible(runs: list[Any], results: list[PassResult], fake: FakeHealthDock) -> None:
    by_id = {result.run_id: result for result in results}
    for run in runs:
        result = by_id[run.id]
        assert run.outcome == result.outcome in ENDINGS  # never left running
        assert run.finished_at is not None
        assert (run.pages, run.records, run.created, run.updated, run.tombstoned) == (
            result.pages,
            result.records,
            result.created,
            result.updated,
            result.tombstoned,
        )
        assert run.rate_limited + run.errors <= run.requests
        assert run.created + run.updated <= run.records + run.candidates
        if run.outcome == "incomplete":
            assert "gave up after" in (run.error or "")
            assert run.tombstoned == 0  # an incomplete pass sweeps nothing
        else:
            assert run.pages >= 1
            # Each patient candidate is confirmed by its own search; appointments on one day
            # share that day's listing.
            confirmations = run.candidates if run.resource == "patient" else min(run.candidates, 1)
            assert run.requests >= run.pages + confirmations
            assert run.tombstoned <= run.candidates
    stats = fake.stats
    # Every request HealthDock saw is counted on a run: none was sent after its pass ended
    # (say, confirmations still in flight after the pass gave up). A few more were counted:
    # sent on a connection the fake had just dropped, they never reached it.
    sent = sum(run.requests for run in runs)
    assert stats.requests <= sent <= stats.requests + sum(run.errors for run in runs)
    assert sum(run.rate_limited for run in runs) <= stats.stormed + stats.rate_limited
    failures = stats.errors + stats.resets + stats.truncated + stats.spikes
    assert 0 < sum(run.errors for run in runs) <= failures, asdict(stats)


def test_a_pass_that_gives_up_while_confirming_leaves_nothing_running(
    engine: Engine, upstream: Upstream
) -> None:
    """Candidates are confirmed concurrently; when one confirmation gives up, the pass ends
    incomplete and the others stop with it: no request goes to HealthDock after the run is
    recorded (its counts would be wrong, and the rate budget spent for nothing)."""
    options = PassOptions(page_size=100, concurrency=4, mass_delete_floor=100)

    async def go() -> tuple[PassResult, set[asyncio.Task[Any]], int]:
        async with upstream.client() as client:
            await reconcile(engine, client, Resource.PATIENT, options)
        upstream.delete_patients(40)  # 40 candidates for the next pass to confirm
        async with HealthDockClient(
            "http://healthdock.test/v1",
            UPSTREAM_API_KEY,
            attempts=2,
            max_backoff_seconds=0.01,
            transport=httpx.ASGITransport(app=upstream.app),
        ) as client:

            def fail_once_listed(done: int, total: int) -> None:
                if done == total:  # the listing is complete: from now on requests fail often
                    upstream.set_faults(error_rate=0.6)

            result = await reconcile(
                engine, client, Resource.PATIENT, options, progress=fail_once_listed
            )
            left = asyncio.all_tasks() - {asyncio.current_task()}
            requests = upstream.fake.stats.requests
            for _ in range(10):
                await asyncio.sleep(0)  # anything still running would send now
            return result, left, upstream.fake.stats.requests - requests

    result, left, late_requests = asyncio.run(go())
    assert result.outcome == "incomplete", result
    assert result.tombstoned == 0
    assert not left
    assert late_requests == 0


def test_a_write_in_flight_when_a_pass_gives_up_is_finished_and_counted_first(
    engine: Engine, upstream: Upstream
) -> None:
    """A page's transaction cannot be stopped half way. When a fetch gives up while the writer
    waits on the database, the pass waits for that transaction before it ends: the run's row
    then says what the pass reported, and nothing of the pass is written after it ended."""
    options = PassOptions(page_size=10, concurrency=2)
    holder = threading.Timer(0.5, lambda: None)

    async def go() -> PassResult:
        async with HealthDockClient(
            "http://healthdock.test/v1",
            UPSTREAM_API_KEY,
            attempts=1,
            transport=httpx.ASGITransport(app=upstream.app),
        ) as client:

            def slow_database_then_fail(done: int, _total: int) -> None:
                nonlocal holder
                if done == 1:
                    # The next write waits half a second for the database; meanwhile the
                    # next fetch fails, and the pass gives up.
                    holder = hold_the_run_row(engine)
                    upstream.set_faults(error_rate=1.0)

            return await reconcile(
                engine, client, Resource.PATIENT, options, progress=slow_database_then_fail
            )

    result = asyncio.run(go())  # returns once every thread it started has finished
    holder.join()
    assert result.outcome == "incomplete", result
    (run,) = recorded_runs(engine)
    assert (run.outcome, run.pages, run.records, run.created) == (
        "incomplete",
        result.pages,
        result.records,
        result.created,
    )
    assert result.pages > 1  # the write that waited was finished, not lost
    with engine.connect() as connection:
        written = connection.execute(select(func.count()).select_from(patients)).scalar_one()
    assert written == result.records


def hold_the_run_row(engine: Engine, seconds: float = 0.5) -> threading.Timer:
    """Lock the database's writes to ``sync_runs`` for ``seconds`` (SQLite: every write)."""
    connection = engine.connect()
    transaction = connection.begin()
    connection.execute(select(sync_runs.c.id).with_for_update())

    def release() -> None:
        transaction.rollback()
        connection.close()

    timer = threading.Timer(seconds, release)
    timer.start()
    return timer
