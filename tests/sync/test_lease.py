"""One reconcile at a time: the lease in the database."""

from __future__ import annotations

import multiprocessing
import time

from sqlalchemy import Engine

from mirror.database import create_mirror_engine, write_transaction
from mirror.leases import acquire_lease, lease_holder, release_lease


def take(engine: Engine, holder: str, ttl: float = 60.0) -> bool:
    return write_transaction(engine, lambda c: acquire_lease(c, "reconcile", holder, ttl))


def test_only_one_holder_at_a_time(engine: Engine) -> None:
    assert take(engine, "a")
    assert not take(engine, "b")
    assert take(engine, "a")  # renewing is taking again
    assert write_transaction(engine, lambda c: lease_holder(c, "reconcile")) == "a"
    write_transaction(engine, lambda c: release_lease(c, "reconcile", "a"))
    assert take(engine, "b")


def test_an_expired_lease_is_taken_over(engine: Engine) -> None:
    assert take(engine, "dead-holder", ttl=1.0)
    assert not take(engine, "b")
    time.sleep(1.2)  # the holder stopped renewing: let its lease run out
    assert take(engine, "b")
    assert not take(engine, "dead-holder")  # and it cannot have it back while b renews


def _contend(url: str, holder: str, results: multiprocessing.Queue[tuple[str, bool]]) -> None:
    engine = create_mirror_engine(url)
    results.put((holder, take(engine, holder)))
    engine.dispose()


def test_processes_racing_for_a_free_lease_get_exactly_one_winner(
    engine: Engine, database_url: str
) -> None:
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[tuple[str, bool]] = context.Queue()
    workers = [
        context.Process(target=_contend, args=(database_url, f"p{i}", results)) for i in range(4)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert sum(won for _, won in outcomes) == 1
