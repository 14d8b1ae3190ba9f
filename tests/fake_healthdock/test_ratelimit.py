"""Rate limits: a fixed window per API key, reported on every response."""

from __future__ import annotations

import asyncio

import httpx

from fake_healthdock import ManualClock
from tests.fake_healthdock.harness import MakeFake, client


def test_429_after_the_limit_until_the_window_resets(
    make_fake: MakeFake, clock: ManualClock
) -> None:
    clock.now = 1_767_225_610.25  # 10.25 s into a 60 s window
    fake = make_fake(rate_limit=3, window_seconds=60)

    async def scenario() -> list[httpx.Response]:
        async with client(fake) as api:
            responses = [await api.get("/v1/patients") for _ in range(5)]
            clock.advance(49.0)  # 0.75 s before the window ends
            responses.append(await api.get("/v1/patients"))
            clock.advance(1.0)
            responses.append(await api.get("/v1/patients"))
            return responses

    responses = run(scenario())
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429, 429, 200]
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == [
        "2",
        "1",
        "0",
        "0",
        "0",
        "0",
        "2",
    ]
    assert {r.headers["X-RateLimit-Limit"] for r in responses} == {"3"}
    assert responses[0].headers["X-RateLimit-Reset"] == "1767225660"
    assert responses[-1].headers["X-RateLimit-Reset"] == "1767225720"
    limited = responses[3]
    assert limited.headers["Retry-After"] == "50"
    assert responses[5].headers["Retry-After"] == "1"
    assert limited.json()["error"]["code"] == "RATE_LIMITED"
    assert "Retry-After" not in responses[0].headers
    assert fake.stats.rate_limited == 3


def test_keys_have_their_own_windows_and_none_turns_limiting_off(make_fake: MakeFake) -> None:
    limited, unlimited = make_fake(rate_limit=1), make_fake(rate_limit=None)

    async def scenario() -> list[httpx.Response]:
        async with client(limited) as api, client(limited, api_key="other") as other:
            first = [await api.get("/v1/patients"), await other.get("/v1/patients")]
        async with client(unlimited) as api:
            return first + [await api.get("/v1/patients") for _ in range(3)]

    responses = run(scenario())
    assert [r.status_code for r in responses] == [200, 401, 200, 200, 200]
    assert "X-RateLimit-Limit" not in responses[-1].headers


def run(scenario: object) -> list[httpx.Response]:
    return asyncio.run(scenario)  # type: ignore[arg-type]
