"""Faults: 5xx answers, dropped connections, truncated bodies, latency and its spikes, 429
storms and page drift."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from fake_healthdock import ConnectionDropped, FakeHealthDock, Faults, ManualClock
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


def test_a_429_storm_refuses_every_request_until_it_ends_whatever_the_budget(
    make_fake: MakeFake, clock: ManualClock
) -> None:
    fake = make_fake(
        rate_limit=100, window_seconds=60, faults=Faults(storm_rate=1.0, storm_seconds=5)
    )
    storm_ends = clock.now + 5

    async def get(api: httpx.AsyncClient) -> httpx.Response:
        return await api.get("/v1/patients")

    async def scenario() -> list[httpx.Response]:
        async with client(fake) as api:
            answers = [await get(api)]  # another client has just used the window up
            fake.faults = Faults()  # no new storm; the one on goes on
            clock.advance(2)
            answers.append(await get(api))
            clock.advance(3)
            answers.append(await get(api))
            return answers

    first, during, after = asyncio.run(scenario())
    assert first.status_code == during.status_code == 429
    assert first.json()["error"]["code"] == "RATE_LIMITED"
    assert first.headers["Retry-After"] == "5"
    assert during.headers["Retry-After"] == "3"
    assert first.headers["X-RateLimit-Remaining"] == "0"
    assert int(first.headers["X-RateLimit-Reset"]) == storm_ends
    assert after.status_code == 200
    assert after.headers["X-RateLimit-Remaining"] == "99"  # the storm did not spend our budget
    assert (fake.stats.storms, fake.stats.stormed, fake.stats.rate_limited) == (1, 2, 0)


def test_a_storm_without_a_rate_limit_still_says_when_to_retry(make_fake: MakeFake) -> None:
    fake = make_fake(rate_limit=None, faults=Faults(storm_rate=1.0, storm_seconds=2.5))

    async def scenario() -> httpx.Response:
        async with client(fake) as api:
            return await api.get("/v1/patients")

    response = asyncio.run(scenario())
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert "X-RateLimit-Remaining" not in response.headers


def test_storms_begin_at_their_rate_and_are_reproducible(
    make_fake: MakeFake, clock: ManualClock
) -> None:
    def refused(seed: int) -> list[bool]:
        fake = make_fake(faults=Faults(storm_rate=0.25, storm_seconds=1), seed=seed)

        async def scenario() -> list[bool]:
            answers = []
            async with client(fake) as api:
                for _ in range(40):
                    answers.append((await api.get("/v1/patients")).status_code == 429)
                    clock.advance(1)  # each storm outlives exactly one request
            return answers

        answers = asyncio.run(scenario())
        assert sum(answers) == fake.stats.storms == fake.stats.stormed
        return answers

    assert 4 < sum(refused(5)) < 20
    assert refused(5) == refused(5)
    assert refused(5) != refused(6)


def test_new_switches_leave_the_faults_a_seed_meant_before(make_fake: MakeFake) -> None:
    def statuses(faults: Faults) -> list[int]:
        fake = make_fake(faults=faults, seed=5)

        async def scenario() -> list[int]:
            async with client(fake) as api:
                return [(await api.get("/v1/patients")).status_code for _ in range(30)]

        return asyncio.run(scenario())

    before = statuses(Faults(error_rate=0.3))
    assert before == statuses(Faults(error_rate=0.3, spike_rate=1.0, spike_seconds=0.0))


def test_latency_spikes_hold_some_requests_past_a_client_timeout(make_fake: MakeFake) -> None:
    fake = make_fake(seed=4, faults=Faults(spike_rate=0.3, spike_seconds=1.5))
    outcomes: list[str] = []
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with (
        serve_in_thread(fake) as url,
        httpx.Client(base_url=url, headers=headers, timeout=0.5) as api,
    ):
        for _ in range(10):
            try:
                outcomes.append(str(api.get("/v1/patients").status_code))
            except httpx.TimeoutException:
                outcomes.append("timeout")
        # A held request goes on after its client gave up; the fake says when all are done.
        deadline = time.monotonic() + 10
        while fake.stats.finished < fake.stats.requests:
            assert time.monotonic() < deadline, "held requests never finished"
            time.sleep(0.02)
    assert outcomes.count("timeout") == fake.stats.spikes > 0
    assert set(outcomes) == {"200", "timeout"}
    assert fake.stats.finished == fake.stats.requests == 10


@pytest.mark.parametrize(
    "change",
    [{"storm_rate": 1.5}, {"spike_rate": -0.1}, {"storm_seconds": 0}, {"spike_seconds": -1}],
)
def test_bad_spike_and_storm_settings_are_refused(change: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(change))):
        Faults().updated(change)


def test_a_reset_after_the_client_gave_up_is_quiet(
    make_fake: MakeFake, capfd: pytest.CaptureFixture[str]
) -> None:
    # A spike outlasts the client's timeout, then the request's connection is to be dropped:
    # the client closed it already, and the fake must not fail with an ASGI error.
    fake = make_fake(faults=Faults(spike_rate=1.0, spike_seconds=0.3, reset_rate=1.0))
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with (
        serve_in_thread(fake) as url,
        httpx.Client(base_url=url, headers=headers, timeout=0.05) as api,
    ):
        with pytest.raises(httpx.TimeoutException):
            api.get("/v1/patients")
        deadline = time.monotonic() + 10
        while fake.stats.finished < 1:
            assert time.monotonic() < deadline, "the held request never finished"
            time.sleep(0.02)
    assert fake.stats.resets == 1
    assert "Exception in ASGI application" not in capfd.readouterr().err
