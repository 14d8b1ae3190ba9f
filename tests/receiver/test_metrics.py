"""GET /metrics as Prometheus would scrape it: exact counts for what was sent and synced."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import Connection

from config import Settings
from fake_healthdock import FakeHealthDock, serve_in_thread
from mirror import leases, runs
from mirror.database import create_mirror_engine, write_transaction
from mirror.events import Resource
from mirror.migrate import upgrade
from mirror.schema import sync_runs
from mirror.states import RunKind, RunOutcome
from receiver import create_app
from receiver.metrics import Metrics
from sync.job import run_reconcile
from sync.schedule import running_scheduler
from tests.conftest import make_settings
from tests.factories import (
    PATIENT_ABHA,
    PATIENT_DOB,
    PATIENT_NAME,
    PATIENT_PHONE,
    appointment,
    encode,
    event,
    patient,
    signed,
)
from tests.support.network import DatabaseLink
from tests.support.stored_events import refuse_patient
from tests.sync.conftest import API_KEY, Upstream

URL = "/webhooks/healthdock"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient[Litestar]) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (sample, labels), v in samples.items() if sample == name}


def send(client: TestClient[Litestar], body: bytes, headers: dict[str, str]) -> int:
    return client.post(URL, content=body, headers=headers).status_code


def test_webhook_counts_are_exactly_what_was_sent(database_url: str, engine: Engine) -> None:
    refuse_patient(engine, "POISON")
    settings = make_settings(database_url, max_body_bytes=2048)
    patients = [encode(event("patient.created", patient(f"PAT{n}"))) for n in range(3)]
    others = [
        encode(event("appointment.created", appointment("APT1"))),
        encode(event("appointment.created", appointment("APT2"))),
        encode(event("patient.deleted", {"patient_id": "PAT0"}, "2024-03-01T00:00:00Z")),
        encode(event("patient.merged", {"patient_id": "PAT1"})),  # unknown: stored, ignored
        encode(event("patient.created", patient("POISON"))),  # the database refuses it
    ]
    with TestClient(create_app(settings)) as client:
        before = scrape(client)
        assert [send(client, body, signed(body)) for body in patients + others] == [200] * 8
        assert send(client, patients[0], signed(patients[0])) == 200  # a redelivery
        assert send(client, patients[1], signed(patients[1], b"wrong-secret")) == 401
        # Signed, so HealthDock's: kept as failed. Refused unread: a body form that is not JSON.
        assert send(client, b"{not json", signed(b"{not json")) == 200
        assert send(client, b'{"signature": "sha256=' + b"0" * 64 + b'", "d": [', {}) == 400
        big = encode(event("patient.created", patient("PAT9", notes="x" * 4096)))
        assert send(client, big, signed(big)) == 413
        after = scrape(client)

    assert series(before, "healthdock_webhook_events_total") == {}
    assert series(after, "healthdock_webhook_events_total") == {
        frozenset({("event_type", "patient.created"), ("outcome", "applied")}): 3,
        frozenset({("event_type", "appointment.created"), ("outcome", "applied")}): 2,
        frozenset({("event_type", "patient.deleted"), ("outcome", "applied")}): 1,
        frozenset({("event_type", "other"), ("outcome", "ignored")}): 1,
        frozenset({("event_type", "patient.created"), ("outcome", "failed")}): 1,
        frozenset({("event_type", "patient.created"), ("outcome", "duplicate")}): 1,
        frozenset({("event_type", "other"), ("outcome", "failed")}): 1,
    }
    assert value(after, "healthdock_webhook_signature_failures_total") == 1
    assert series(after, "healthdock_webhook_rejected_total") == {
        frozenset({("reason", "bad_request")}): 1,
        frozenset({("reason", "too_large")}): 1,
        frozenset({("reason", "unavailable")}): 0,
    }
    # Every acknowledged event, and only those, has its arrival-to-commit latency.
    assert value(after, "healthdock_webhook_apply_seconds_count") == 10
    assert value(after, "healthdock_webhook_apply_seconds_bucket", le="+Inf") == 10
    assert value(after, "healthdock_events_unapplied", status="failed") == 2
    assert value(after, "healthdock_events_unapplied", status="pending") == 0
    assert value(after, "healthdock_database_up") == 1


def test_no_record_ids_or_patient_data_in_the_exposition(client: TestClient[Litestar]) -> None:
    body = encode(event("patient.created", patient("PAT424242")))
    assert send(client, body, signed(body)) == 200
    text = client.get("/metrics").text
    for secret in ("PAT424242", *PATIENT_NAME, PATIENT_PHONE, PATIENT_DOB, PATIENT_ABHA):
        assert secret not in text


def test_each_app_counts_only_its_own_requests(settings: Settings, engine: Engine) -> None:
    body = encode(event("patient.created", patient()))
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        assert send(first, body, signed(body)) == 200
        assert send(first, body, signed(body, b"wrong")) == 401
        assert value(scrape(first), "healthdock_webhook_signature_failures_total") == 1
        assert value(scrape(second), "healthdock_webhook_signature_failures_total") == 0
        assert series(scrape(second), "healthdock_webhook_events_total") == {}


def _run_totals(engine: Engine) -> dict[tuple[str, str, str], tuple[int, int, int, int]]:
    c = sync_runs.c
    with engine.connect() as connection:
        rows = connection.execute(
            select(c.resource, c.kind, c.outcome, func.count(), func.sum(c.pages),
                   func.sum(c.requests), func.sum(c.created))
            .group_by(c.resource, c.kind, c.outcome)
        ).all()  # fmt: skip
    return {(r[0], r[1], r[2]): (int(r[3]), int(r[4]), int(r[5]), int(r[6])) for r in rows}


def test_sync_metrics_are_read_from_the_database(database_url: str, engine: Engine) -> None:
    fake = FakeHealthDock(
        seed=11, patients=130, appointments_per_patient=1.0, api_key=API_KEY, rate_limit=None
    )
    upstream = Upstream(fake)
    settings = make_settings(
        database_url, api_url="http://healthdock.test/v1", api_key=API_KEY, sync_page_size=50
    )
    # The reconcile runs apart from the receiver, as `healthdock-mirror worker` would.
    results = asyncio.run(
        run_reconcile(
            settings, engine, list(Resource), transport=httpx.ASGITransport(app=upstream.app)
        )
    )
    assert [r.outcome for r in results] == [RunOutcome.SUCCESS, RunOutcome.SUCCESS]

    # Another pass cut short by 429s, and one that is still running.
    def incomplete(connection: Connection) -> None:
        run = runs.start_or_resume(connection, "patient", RunKind.UPCOMING, resume=False)
        runs.finish(connection, run.id, RunOutcome.INCOMPLETE, {"pages": 2, "rate_limited": 3})
        runs.start_or_resume(connection, "appointment", RunKind.UPCOMING, resume=False)

    write_transaction(engine, incomplete)
    patients = sum(1 for _ in fake.patients())
    appointments = sum(1 for _ in fake.appointments())

    with TestClient(create_app(settings)) as client:
        samples = scrape(client)
        write_transaction(
            engine, functools.partial(leases.acquire_lease, name="reconcile",
                                      holder="worker-host:4242", ttl_seconds=60)
        )  # fmt: skip
        held = scrape(client)
        write_transaction(
            engine,
            functools.partial(leases.release_lease, name="reconcile", holder="worker-host:4242"),
        )
        released = scrape(client)

    totals = _run_totals(engine)
    assert series(samples, "healthdock_sync_runs_total") == {
        frozenset({("resource", "patient"), ("kind", "backfill"), ("outcome", "success")}): 1,
        frozenset({("resource", "appointment"), ("kind", "backfill"), ("outcome", "success")}): 1,
        frozenset({("resource", "patient"), ("kind", "upcoming"), ("outcome", "incomplete")}): 1,
    }
    assert series(samples, "healthdock_sync_runs_running") == {
        frozenset({("resource", "appointment"), ("kind", "upcoming")}): 1
    }
    # The first pass into an empty mirror is a backfill: its initial copy (every record) is
    # not webhook loss.
    assert totals[("patient", "backfill", "success")][3] == patients
    assert totals[("appointment", "backfill", "success")][3] == appointments
    assert set(series(samples, "healthdock_sync_healed_total").values()) == {0}
    assert value(samples, "healthdock_sync_pages_total", resource="patient", kind="backfill") == 3
    assert value(samples, "healthdock_sync_pages_total", resource="patient", kind="upcoming") == 2
    for resource in ("patient", "appointment"):
        _, pages, requests, _ = totals[(resource, "backfill", "success")]
        assert value(
            samples, "healthdock_sync_pages_total", resource=resource, kind="backfill"
        ) == (pages)
        assert value(
            samples, "healthdock_sync_requests_total", resource=resource, kind="backfill"
        ) == (requests)
        assert value(
            samples, "healthdock_sync_last_success_timestamp_seconds", resource=resource,
            kind="backfill",
        ) == pytest.approx(time.time(), abs=3600)  # fmt: skip
    assert value(samples, "healthdock_sync_rate_limited_total", resource="patient",
                 kind="upcoming") == 3  # fmt: skip
    assert value(samples, "healthdock_sync_rate_limited_total", resource="patient",
                 kind="backfill") == 0  # fmt: skip
    # The receiver saw no HealthDock answer itself: no rate budget to report.
    assert series(samples, "healthdock_sync_rate_budget_remaining") == {}

    assert value(samples, "healthdock_sync_leases_held") == 0
    assert series(samples, "healthdock_sync_lease_holder_info") == {}
    assert value(held, "healthdock_sync_leases_held") == 1
    assert series(held, "healthdock_sync_lease_holder_info") == {
        frozenset({("lease", "reconcile"), ("holder", "worker-host:4242")}): 1
    }
    assert value(released, "healthdock_sync_leases_held") == 0
    assert series(released, "healthdock_sync_lease_holder_info") == {}


def test_sqlite_write_lock_counts_503s_and_metrics_still_read(tmp_path: Path) -> None:
    path = tmp_path / "mirror.db"
    settings = make_settings(f"sqlite:///{path}", database_timeout_seconds=0.2)
    upgrade(create_mirror_engine(settings.database_url))
    body = encode(event("patient.created", patient()))
    with TestClient(create_app(settings)) as client:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        assert send(client, body, signed(body)) == 503
        # Another process holds the write lock; readers go on (WAL), and so do the metrics.
        locked = scrape(client)
        holder.execute("ROLLBACK")
        holder.close()
    assert value(locked, "healthdock_webhook_rejected_total", reason="unavailable") == 1
    assert value(locked, "healthdock_database_up") == 1
    assert value(locked, "healthdock_sync_leases_held") == 0


def test_postgres_unreachable_metrics_still_answer_and_say_database_down(
    postgres_url: str,
) -> None:
    url = urlparse(postgres_url)
    upgrade(create_mirror_engine(postgres_url))
    body = encode(event("patient.created", patient()))
    with DatabaseLink(url.hostname or "127.0.0.1", url.port or 5432) as proxy:
        proxied = postgres_url.replace(f"{url.hostname}:{url.port}", f"127.0.0.1:{proxy.port}")
        settings = make_settings(proxied, database_timeout_seconds=1.0)
        with TestClient(create_app(settings)) as client:
            proxy.cut()
            assert send(client, body, signed(body)) == 503
            down = scrape(client)
            proxy.restore()
            up = scrape(client)
    assert value(down, "healthdock_database_up") == 0
    assert series(down, "healthdock_sync_leases_held") == {}  # skipped, not reported as 0
    assert series(down, "healthdock_events_unapplied") == {}
    assert value(down, "healthdock_webhook_rejected_total", reason="unavailable") == 1
    assert value(up, "healthdock_database_up") == 1
    assert value(up, "healthdock_sync_leases_held") == 0


def _wait_for(check: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not reached in {seconds:.0f} s"
        time.sleep(0.1)


def test_serve_with_scheduler_reports_the_rate_budget(tmp_path: Path) -> None:
    # A frozen upstream clock keeps every request in one rate-limit window.
    fake = FakeHealthDock(
        seed=5, patients=40, appointments_per_patient=1.0, api_key=API_KEY, rate_limit=1000,
        clock=lambda: 1_000_000.0,
    )  # fmt: skip
    database_url = f"sqlite:///{tmp_path / 'mirror.db'}"
    upgrade(create_mirror_engine(database_url))
    with serve_in_thread(fake) as base_url:
        settings = make_settings(database_url, api_url=f"{base_url}/v1", api_key=API_KEY)
        # What `healthdock-mirror serve` runs: the receiver with the scheduler inside it.
        metrics = Metrics()
        scheduler = functools.partial(
            running_scheduler, settings, on_rate_budget=metrics.observe_rate_budget
        )
        serving = create_app(settings, services=[scheduler], metrics=metrics)
        with TestClient(serving) as client, TestClient(create_app(settings)) as bystander:

            def reconciled() -> bool:
                finished = series(scrape(client), "healthdock_sync_runs_total")
                return len(finished) == 2  # patients and appointments, each passed once

            _wait_for(reconciled)
            samples = scrape(client)
            others = scrape(bystander)

    requests = sum(series(samples, "healthdock_sync_requests_total").values())
    assert requests > 0
    assert value(samples, "healthdock_sync_rate_budget_limit") == 1000
    assert value(samples, "healthdock_sync_rate_budget_remaining") == 1000 - requests
    assert value(samples, "healthdock_sync_rate_budget_reset_timestamp_seconds") == 1_000_020
    # Another app in the same process hosts no scheduler: it reports no budget.
    assert series(others, "healthdock_sync_rate_budget_remaining") == {}
    assert series(others, "healthdock_sync_runs_total") == series(
        samples, "healthdock_sync_runs_total"
    )
