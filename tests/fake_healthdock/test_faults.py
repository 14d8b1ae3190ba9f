"""Faults: 5xx answers, dropped connections, truncated bodies, latency and page drift."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from fake_healthdock import ConnectionDropped, FakeHealthDock, Faults
from fake_healthdock.server import serve_in_thread
from tests.fake_healthdock.harness import API_KEY, MakeFake, client


def test_error_rate_answers_5xx_in_the_envelope(make_fake: MakeFake) -> None:
    fake = make_fake(faults=Faults(error_rate=0.5), seed=11)

    async def scenario() -> list[httpx.Response]:
        async with client(fake) as api:
            return [await api.get("/v1/patients") for _ in range(40)]

    responses = asyncio.run(scenario())
    failed = [r for r in responses if r.status_code >= 500]
    assert 8 < len(failed) < 32
    assert {r.status_code for r in failed} == {500, 502, 503}
    assert {r.json()["error"]["code"] for r in failed} == {
        "INTERNAL_ERROR",
        "BAD_GATEWAY",
        "SERVICE_UNAVAILABLE",
    }
    assert fake.stats.errors == len(failed)
    assert all("X-RateLimit-Remaining" in r.headers for r in failed)


def test_faults_are_reproducible_from_the_seed(make_fake: MakeFake) -> None:
    def statuses(seed: int) -> list[int]:
        fake = make_fake(faults=Faults(error_rate=0.3, truncate_rate=0.2), seed=seed)

        async def scenario() -> list[int]:
            async with client(fake) as api:
                responses = [await api.get("/v1/patients") for _ in range(30)]
                return [r.status_code * 10 + _parses(r) for r in responses]

        return asyncio.run(scenario())

    assert statuses(5) == statuses(5)
    assert statuses(5) != statuses(6)


def test_truncated_bodies_are_invalid_json_with_a_matching_length(make_fake: MakeFake) -> None:
    fake = make_fake(faults=Faults(truncate_rate=1.0))

    async def scenario() -> httpx.Response:
        async with client(fake) as api:
            return await api.get("/v1/patients", params={"limit": 50})

    response = asyncio.run(scenario())
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content) > 0
    with pytest.raises(json.JSONDecodeError):
        response.json()
    assert fake.stats.truncated == 1


def test_resets_raise_a_transport_error_in_process(make_fake: MakeFake) -> None:
    fake = make_fake(faults=Faults(reset_rate=1.0))

    async def scenario() -> None:
        async with client(fake) as api:
            await api.get("/v1/patients")

    with pytest.raises(httpx.TransportError) as raised:
        asyncio.run(scenario())
    assert isinstance(raised.value, ConnectionDropped)
    assert fake.stats.resets == 1


def test_resets_drop_a_real_connection_without_a_response(make_fake: MakeFake) -> None:
    fake = make_fake(faults=Faults(reset_rate=0.5), seed=3)
    outcomes: list[str] = []
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with serve_in_thread(fake) as url, httpx.Client(base_url=url, headers=headers) as api:
        for _ in range(12):
            try:
                outcomes.append(str(api.get("/v1/patients").status_code))
            except httpx.TransportError as error:
                outcomes.append(type(error).__name__)
    assert "200" in outcomes
    dropped = [o for o in outcomes if o != "200"]
    assert len(dropped) == fake.stats.resets > 0
    assert set(dropped) <= {"ReadError", "RemoteProtocolError"}


def test_latency_delays_each_request(make_fake: MakeFake) -> None:
    fake = make_fake(faults=Faults(latency=(0.05, 0.06)))

    async def scenario() -> float:
        async with client(fake) as api:
            started = time.perf_counter()
            for _ in range(3):
                await api.get("/v1/patients")
            return time.perf_counter() - started

    assert asyncio.run(scenario()) >= 0.15


def test_drift_shifts_pages_while_a_client_pages(make_fake: MakeFake) -> None:
    fake = make_fake(patients=200, faults=Faults(drift_rate=1.0))

    async def scenario() -> list[int]:
        async with client(fake) as api:
            totals = []
            for page in (1, 2, 3, 4):
                response = await api.get("/v1/patients", params={"page": page, "limit": 50})
                totals.append(response.json()["data"]["pagination"]["total_count"])
            return totals

    totals = asyncio.run(scenario())
    assert len(set(totals)) > 1
    assert fake.stats.drifted == 4
    assert totals[-1] == fake.counts()["patients"]
    fake.faults = Faults()  # a fresh pass without drift still sees every record once
    assert _page_all(fake) == [p.id for p in fake.patients()]


def _page_all(fake: FakeHealthDock) -> list[str]:
    async def scenario() -> list[str]:
        ids: list[str] = []
        async with client(fake) as api:
            page = 1
            while True:
                response = await api.get("/v1/patients", params={"page": page, "limit": 100})
                batch = response.json()["data"]["patients"]
                if not batch:
                    return ids
                ids += [p["id"] for p in batch]
                page += 1

    return asyncio.run(scenario())


def _parses(response: httpx.Response) -> int:
    try:
        response.json()
    except json.JSONDecodeError:
        return 0
    return 1
