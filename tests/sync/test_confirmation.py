"""Confirming a sweep's candidates: no record HealthDock still has is ever tombstoned.

HealthDock documents ``search`` ("by name or ID") on ``GET /patients`` only; the fake ignores
it on ``GET /appointments``, as a lenient API would. Some tests put a layer in front of the
fake: one that hides a record from the full listing (page drift, made deterministic), one
that ignores ``search`` on patients too (a search matching many pages).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

import msgspec
import pytest
from sqlalchemy import Engine, select

from mirror.events import Resource
from mirror.schema import appointments, patients, webhook_events
from mirror.states import EventSource
from sync import PassOptions, PassResult, reconcile
from tests.sync.conftest import Upstream, mirror_of, truth_of

OPTIONS = PassOptions(page_size=100, concurrency=4, mass_delete_floor=10)
Document = dict[str, Any]
Wrap = Callable[[Any], Any]


def run_pass(
    engine: Engine, upstream: Upstream, resource: Resource, wrap: Wrap | None = None
) -> PassResult:
    async def go() -> PassResult:
        async with upstream.client(wrap=wrap) as client:
            return await reconcile(engine, client, resource, OPTIONS)

    result = asyncio.run(go())
    assert result.outcome == "success", result.error
    return result


def rewriting(
    rewrite: Callable[[str, dict[str, str], Document], None], drop_search: bool = False
) -> Wrap:
    """An ASGI layer that lets ``rewrite`` change each successful JSON answer (given the
    path and the query as the client sent it); with ``drop_search``, ``search`` never
    reaches the fake."""

    def wrap(app: Any) -> Any:
        async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            query = dict(parse_qsl(scope["query_string"].decode()))
            if drop_search:
                kept = [(k, v) for k, v in query.items() if k != "search"]
                scope = {**scope, "query_string": urlencode(kept).encode()}
            start: dict[str, Any] = {}
            chunks: list[bytes] = []

            async def capture(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    start.update(message)
                    return
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = b"".join(chunks)
                if start["status"] == 200:
                    document = json.loads(body)
                    rewrite(scope["path"], query, document)
                    body = json.dumps(document).encode()
                headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body})

            await app(scope, receive, capture)

        return wrapped

    return wrap


def hiding_from_full_listing(record_id: str) -> Callable[[str, dict[str, str], Document], None]:
    """Page drift on demand: the full listing (no filter, no search) misses ``record_id``."""

    def rewrite(path: str, query: dict[str, str], document: Document) -> None:
        if {"date", "doctor_id", "status", "search"} & set(query):
            return
        key = "patients" if path.endswith("/patients") else "appointments"
        records = document["data"][key]
        document["data"][key] = [r for r in records if r["id"] != record_id]

    return rewrite


def live_ids(engine: Engine, resource: Resource) -> set[str]:
    table = patients if resource is Resource.PATIENT else appointments
    with engine.connect() as connection:
        return set(
            connection.execute(select(table.c.id).where(table.c.deleted_at.is_(None))).scalars()
        )


@pytest.mark.parametrize("resource", list(Resource))
def test_a_record_healthdock_returns_is_never_tombstoned_even_when_unusable(
    engine: Engine, upstream: Upstream, resource: Resource
) -> None:
    run_pass(engine, upstream, resource)
    table = upstream.fake.store.patients if resource is Resource.PATIENT else None
    store = table or upstream.fake.store.appointments
    record_id = str(list(upstream.records(resource))[7]["id"])
    found = store.find(record_id)
    assert found is not None
    index, record = found
    # Listed, but its version cannot be read: the pass skips it, so it is a candidate, and
    # HealthDock answers the confirmation with the same unusable record.
    store.put(index, msgspec.structs.replace(record, updated_at="soon", created_at="later"))  # type: ignore[arg-type]
    for _ in range(3):  # for appointments, the third pass is the second to miss it
        result = run_pass(engine, upstream, resource)
        assert result.candidates == 1
        assert result.tombstoned == 0
        assert record_id in live_ids(engine, resource)


def test_a_deleted_appointment_is_tombstoned_by_the_second_pass_that_misses_it(
    engine: Engine, upstream: Upstream
) -> None:
    run_pass(engine, upstream, Resource.APPOINTMENT)
    gone = str(list(upstream.records(Resource.APPOINTMENT))[-3]["id"])
    upstream.fake.delete_appointment(gone)

    first = run_pass(engine, upstream, Resource.APPOINTMENT)
    # Missed once: page drift looks the same, so it is not deleted yet.
    assert (first.candidates, first.tombstoned) == (1, 0)
    assert gone in live_ids(engine, Resource.APPOINTMENT)

    second = run_pass(engine, upstream, Resource.APPOINTMENT)
    assert (second.candidates, second.tombstoned) == (1, 1)
    assert gone not in live_ids(engine, Resource.APPOINTMENT)
    assert mirror_of(engine, Resource.APPOINTMENT) == truth_of(upstream, Resource.APPOINTMENT)
    with engine.connect() as connection:
        logged = connection.execute(
            select(webhook_events.c.event_type).where(
                webhook_events.c.source == EventSource.RECONCILE, webhook_events.c.record_id == gone
            )
        ).scalars()
        # Created by the first pass (from an empty mirror), deleted by the third.
        assert sorted(logged) == ["appointment.created", "appointment.deleted"]


def test_an_appointment_missed_by_drift_is_found_on_its_day_and_not_tombstoned(
    engine: Engine, upstream: Upstream
) -> None:
    run_pass(engine, upstream, Resource.APPOINTMENT)
    missed = str(list(upstream.records(Resource.APPOINTMENT))[42]["id"])
    hidden = rewriting(hiding_from_full_listing(missed))
    for _ in range(3):  # missed by every full listing, found by its day each time
        result = run_pass(engine, upstream, Resource.APPOINTMENT, wrap=hidden)
        assert (result.candidates, result.tombstoned) == (1, 0)
        assert missed in live_ids(engine, Resource.APPOINTMENT)


def test_an_appointment_missed_by_drift_after_a_missed_reschedule_is_not_tombstoned(
    engine: Engine, upstream: Upstream
) -> None:
    run_pass(engine, upstream, Resource.APPOINTMENT)
    moved = list(upstream.records(Resource.APPOINTMENT))[42]
    # Rescheduled upstream (its webhook lost): the mirror still has it on the old day.
    old_day = date.fromisoformat(moved["date_time"][:10])
    new_time = f"{old_day + timedelta(days=3)}{moved['date_time'][10:]}"
    upstream.fake.update_appointment(moved["id"], {"date_time": new_time})

    drifted = run_pass(
        engine,
        upstream,
        Resource.APPOINTMENT,
        wrap=rewriting(hiding_from_full_listing(moved["id"])),
    )
    assert (drifted.candidates, drifted.tombstoned) == (1, 0)
    assert moved["id"] in live_ids(engine, Resource.APPOINTMENT)

    run_pass(engine, upstream, Resource.APPOINTMENT)
    assert mirror_of(engine, Resource.APPOINTMENT) == truth_of(upstream, Resource.APPOINTMENT)
    assert mirror_of(engine, Resource.APPOINTMENT)[moved["id"]]["date_time"] == new_time


def test_a_patient_whose_search_matches_several_pages_is_confirmed_either_way(
    engine: Engine, upstream: Upstream
) -> None:
    run_pass(engine, upstream, Resource.PATIENT)
    everyone = [str(r["id"]) for r in upstream.records(Resource.PATIENT)]
    assert len(everyone) > 200  # a search that matches everyone is three pages of 100
    present, gone = everyone[-1], everyone[-2]  # on the last page of such a search
    upstream.fake.delete_patient(gone)
    # A HealthDock that ignores ``search`` answers every page of all patients.
    lenient = rewriting(hiding_from_full_listing(present), drop_search=True)

    result = run_pass(engine, upstream, Resource.PATIENT, wrap=lenient)
    assert (result.candidates, result.tombstoned) == (2, 1)
    assert present in live_ids(engine, Resource.PATIENT)
    assert gone not in live_ids(engine, Resource.PATIENT)
    assert mirror_of(engine, Resource.PATIENT) == truth_of(upstream, Resource.PATIENT)


def test_a_patient_search_longer_than_the_bound_confirms_nothing(upstream: Upstream) -> None:
    everyone = [str(r["id"]) for r in upstream.records(Resource.PATIENT)]
    last, gone = everyone[-1], everyone[-2]
    upstream.fake.delete_patient(gone)
    lenient = rewriting(lambda *_: None, drop_search=True)

    async def look() -> list[tuple[str | None, bool]]:
        async with upstream.client(wrap=lenient) as client:
            answers = [
                await client.find_patient(last, max_pages=2),
                await client.find_patient(gone, max_pages=2),
                await client.find_patient(last, max_pages=3),
                await client.find_patient(gone, max_pages=3),
            ]
        return [(None if a.record is None else a.record["id"], a.complete) for a in answers]

    assert asyncio.run(look()) == [(None, False), (None, False), (last, True), (None, True)]
