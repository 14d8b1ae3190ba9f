"""Reconciling the mirror with the fake HealthDock, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Engine, func, select

from mirror.database import write_transaction
from mirror.events import Resource
from mirror.schema import patients, sync_runs, webhook_events
from mirror.states import EventSource
from sync import PassOptions, PassResult, reconcile
from tests.sync.conftest import Upstream, mirror_of, truth_of

pytestmark = pytest.mark.usefixtures("engine")

OPTIONS = PassOptions(page_size=100, concurrency=4, mass_delete_share=0.05, mass_delete_floor=10)


def run_pass(
    engine: Engine, upstream: Upstream, resource: Resource, options: PassOptions = OPTIONS
) -> PassResult:
    async def go() -> PassResult:
        async with upstream.client() as client:
            return await reconcile(engine, client, resource, options)

    return asyncio.run(go())


def test_full_reconcile_from_empty_equals_the_truth(engine: Engine, upstream: Upstream) -> None:
    for resource in Resource:
        result = run_pass(engine, upstream, resource)
        assert result.outcome == "success", result.error
        assert mirror_of(engine, resource) == truth_of(upstream, resource)
    with engine.connect() as connection:
        typed = connection.execute(select(patients).limit(1)).one()
    assert typed.first_name
    assert typed.phone
    assert typed.date_of_birth


def test_missed_webhooks_are_healed_and_counted(engine: Engine, upstream: Upstream) -> None:
    run_pass(engine, upstream, Resource.PATIENT)
    created = upstream.create_patient()
    updated = upstream.update_any_patient()
    deleted = upstream.delete_any_patient()
    result = run_pass(engine, upstream, Resource.PATIENT)
    assert (result.created, result.updated, result.tombstoned) == (1, 1, 1)
    assert mirror_of(engine, Resource.PATIENT) == truth_of(upstream, Resource.PATIENT)
    with engine.connect() as connection:
        healed = connection.execute(
            select(webhook_events.c.record_id, webhook_events.c.event_type).where(
                webhook_events.c.source == EventSource.RECONCILE
            )
        ).all()
        run = connection.execute(select(sync_runs).where(sync_runs.c.id == result.run_id)).one()
    assert {
        (created, "patient.created"),
        (updated, "patient.updated"),
        (deleted, "patient.deleted"),
    } <= set(map(tuple, healed))
    assert (run.outcome, run.created, run.updated, run.tombstoned) == ("success", 1, 1, 1)
    assert run.pages == result.pages
    assert run.records == result.records
    assert run.requests >= run.pages


def test_a_second_pass_over_an_unchanged_upstream_changes_nothing(
    engine: Engine, upstream: Upstream
) -> None:
    run_pass(engine, upstream, Resource.PATIENT)
    again = run_pass(engine, upstream, Resource.PATIENT)
    assert (again.created, again.updated, again.tombstoned, again.candidates) == (0, 0, 0, 0)


def test_page_drift_causes_no_false_tombstone_and_the_next_pass_converges(
    engine: Engine, upstream: Upstream
) -> None:
    run_pass(engine, upstream, Resource.PATIENT)
    upstream.set_faults(drift_rate=0.5)
    small_pages = PassOptions(page_size=10, concurrency=1, mass_delete_floor=50)
    drifted = run_pass(engine, upstream, Resource.PATIENT, small_pages)
    assert drifted.outcome == "success", drifted.error
    # Deletions shifted records onto pages already read: the pass missed some that
    # HealthDock still has. They were candidates, confirmed present, and not tombstoned.
    assert drifted.candidates > drifted.tombstoned
    truth = truth_of(upstream, Resource.PATIENT)
    with engine.connect() as connection:
        tombstoned = set(
            connection.execute(
                select(patients.c.id).where(patients.c.deleted_at.is_not(None))
            ).scalars()
        )
    assert not tombstoned & set(truth)
    upstream.set_faults(drift_rate=0.0)
    run_pass(engine, upstream, Resource.PATIENT)
    assert mirror_of(engine, Resource.PATIENT) == truth_of(upstream, Resource.PATIENT)


def test_faults_at_ten_percent_still_converge(engine: Engine, upstream: Upstream) -> None:
    upstream.set_faults(error_rate=0.1, reset_rate=0.1, truncate_rate=0.1)
    for resource in Resource:
        result = run_pass(engine, upstream, resource)
        assert result.outcome == "success", result.error
        assert mirror_of(engine, resource) == truth_of(upstream, resource)


def test_a_pass_cut_short_resumes_from_its_checkpoint(engine: Engine, upstream: Upstream) -> None:
    options = PassOptions(page_size=10, concurrency=1)

    async def interrupted() -> None:
        async with upstream.client() as client:
            task = asyncio.current_task()
            assert task is not None

            def stop_after_three(done: int, _total: int) -> None:
                if done >= 3:
                    task.cancel()

            await reconcile(engine, client, Resource.PATIENT, options, progress=stop_after_three)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(interrupted())
    with engine.connect() as connection:
        cut = connection.execute(select(sync_runs)).one()
    assert cut.outcome == "running"
    pages = -(-len(truth_of(upstream, Resource.PATIENT)) // 10)
    # The writer commits whatever pages have arrived together, and cancellation lands at the
    # next suspension (a write in progress still commits, with its checkpoint): the pass
    # stopped somewhere after page 3 and well before the end.
    applied = cut.checkpoint["page"]
    assert 3 <= applied < pages - 1

    async def resumed() -> tuple[PassResult, int]:
        async with upstream.client() as client:
            result = await reconcile(engine, client, Resource.PATIENT, options)
            return result, client.stats.requests

    result, requests = asyncio.run(resumed())
    assert result.run_id == cut.id
    assert result.outcome == "success"
    assert requests == pages - applied  # only what was left
    assert mirror_of(engine, Resource.PATIENT) == truth_of(upstream, Resource.PATIENT)


def test_no_429_when_paced_under_a_small_limit(engine: Engine, rate_limited: Upstream) -> None:
    options = PassOptions(page_size=10, concurrency=4)
    result = run_pass(engine, rate_limited, Resource.PATIENT, options)
    assert result.outcome == "success"
    assert rate_limited.rate_limited_count() == 0
    with engine.connect() as connection:
        assert connection.execute(select(sync_runs.c.rate_limited)).scalar_one() == 0


def test_the_mass_delete_brake_holds_until_an_operator_allows(
    engine: Engine, upstream: Upstream
) -> None:
    run_pass(engine, upstream, Resource.PATIENT)
    live = len(truth_of(upstream, Resource.PATIENT))
    upstream.delete_patients(live // 2)  # as if HealthDock lost half its patients
    held = run_pass(engine, upstream, Resource.PATIENT)
    assert held.outcome == "held"
    assert held.tombstoned == 0
    assert "--allow-mass-delete" in (held.error or "")
    assert len(mirror_of(engine, Resource.PATIENT)) == live
    allowed = run_pass(
        engine,
        upstream,
        Resource.PATIENT,
        PassOptions(mass_delete_share=0.05, mass_delete_floor=10, allow_mass_delete=True),
    )
    assert allowed.outcome == "success"
    assert allowed.tombstoned == live - live // 2
    assert mirror_of(engine, Resource.PATIENT) == truth_of(upstream, Resource.PATIENT)


def test_a_record_written_after_the_pass_began_is_never_swept(
    engine: Engine, upstream: Upstream
) -> None:
    from datetime import UTC, datetime

    from mirror.events import record_write
    from mirror.records import apply_writes
    from mirror.versions import Action

    async def pass_with_a_webhook_midway() -> PassResult:
        async with upstream.client() as client:

            def webhook_arrives(done: int, _total: int) -> None:
                if done == 1:
                    # A record HealthDock created after our pages were read, via its webhook.
                    write = record_write(
                        Resource.PATIENT,
                        Action.CREATE,
                        datetime.now(UTC).isoformat(),
                        {"patient_id": "LATE1"},
                    )
                    write_transaction(engine, lambda c: apply_writes(c, [write]))

            return await reconcile(
                engine,
                client,
                Resource.PATIENT,
                PassOptions(page_size=100, concurrency=1),
                progress=webhook_arrives,
            )

    result = asyncio.run(pass_with_a_webhook_midway())
    assert result.tombstoned == 0
    with engine.connect() as connection:
        late = connection.execute(
            select(patients.c.deleted_at).where(patients.c.id == "LATE1")
        ).one()
        assert late.deleted_at is None
        assert connection.execute(select(func.count()).select_from(patients)).scalar_one() >= 1
