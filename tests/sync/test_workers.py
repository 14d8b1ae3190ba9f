"""Two worker processes sharing one PostgreSQL database: one reconcile at a time."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from fake_healthdock import FakeHealthDock, Faults, serve_in_thread
from mirror.database import create_mirror_engine
from mirror.migrate import upgrade
from mirror.schema import sync_runs


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def test_two_workers_never_reconcile_at_once(postgres_url: str, tmp_path: Path) -> None:
    upgrade(create_mirror_engine(postgres_url))
    fake = FakeHealthDock(seed=2, patients=300, api_key="k", rate_limit=None,
                          faults=Faults(latency=(0.1, 0.2)))  # fmt: skip
    with serve_in_thread(fake) as base_url:
        env = {**os.environ, "HEALTHDOCK_DATABASE_URL": postgres_url,
               "HEALTHDOCK_API_URL": f"{base_url}/v1", "HEALTHDOCK_API_KEY": "k",
               "HEALTHDOCK_SYNC_INTERVAL_MINUTES": "0.02", "HEALTHDOCK_SYNC_CONCURRENCY": "1",
               "HEALTHDOCK_SYNC_UPCOMING_MINUTES": "60"}  # fmt: skip
        logs = [tmp_path / f"worker{i}.log" for i in range(2)]
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "healthdock_mirror", "worker"],
                env=env,
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
            )
            for log in logs
        ]
        try:
            engine = create_mirror_engine(postgres_url)
            deadline = time.monotonic() + 60
            while True:  # wait on a condition, not a fixed sleep: three finished passes
                with engine.connect() as connection:
                    done = connection.execute(
                        select(sync_runs.c.id).where(sync_runs.c.finished_at.is_not(None))
                    ).all()
                if len(done) >= 6:  # both resources, three times
                    break
                assert time.monotonic() < deadline, "the workers did not reconcile"
                time.sleep(0.2)
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=30)
    with engine.connect() as connection:
        passes = connection.execute(
            select(sync_runs.c.started_at, sync_runs.c.finished_at)
            .where(
                sync_runs.c.finished_at.is_not(None),
                sync_runs.c.kind.in_(("backfill", "full")),  # every pass over a whole resource
            )
            .order_by(sync_runs.c.started_at)
        ).all()
    engine.dispose()
    intervals = [(_aware(p.started_at), _aware(p.finished_at)) for p in passes]
    for (_, first_end), (second_start, _) in itertools.pairwise(intervals):
        assert first_end <= second_start, "two reconciles overlapped"
    output = "".join(log.read_text() for log in logs)
    assert "reconcile skipped: another reconcile is running" in output
