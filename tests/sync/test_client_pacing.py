"""The client against the fake HealthDock: in a window whose budget it does not know yet, one
request goes alone until its answer's rate-limit headers are read."""

from __future__ import annotations

import asyncio
from typing import Any

from mirror.events import Resource
from tests.sync.conftest import Upstream


def test_requests_at_once_send_one_before_the_first_answer(rate_limited: Upstream) -> None:
    rate_limited.set_faults(latency=(0.05, 0.05))  # answers take a while: requests overlap
    in_flight = 0
    answered = False
    before_first_answer: list[int] = []  # in flight at each request sent before any answer

    def wrap(app: Any) -> Any:
        async def counted(scope: dict[str, Any], receive: Any, send: Any) -> None:
            nonlocal in_flight, answered
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            in_flight += 1
            if not answered:
                before_first_answer.append(in_flight)

            async def answer(message: dict[str, Any]) -> None:
                nonlocal in_flight, answered
                if message["type"] == "http.response.start":
                    in_flight -= 1
                    answered = True
                await send(message)

            await app(scope, receive, answer)

        return counted

    async def go() -> int:
        # Eight pages asked at once, as the sweep's confirmations or a pass's fetchers do.
        async with rate_limited.client(wrap=wrap) as client:
            pages = await asyncio.gather(
                *(client.page(Resource.PATIENT, n, 10) for n in range(1, 9))
            )
            return len(pages)

    assert asyncio.run(go()) == 8
    assert before_first_answer == [1]
    assert rate_limited.rate_limited_count() == 0
