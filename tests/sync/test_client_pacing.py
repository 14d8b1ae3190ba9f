"""The client against the fake HealthDock: in a window whose budget it does not know yet, one
request goes alone until its answer's rate-limit headers are read; an API that announces no
budget at all is not paced."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from mirror.events import Resource
from tests.sync.conftest import Upstream


@dataclass
class _Concurrency:
    """What the fake saw: requests in flight when each was sent, before and after the first
    answer."""

    in_flight: int = 0
    answered: bool = False
    before_first_answer: list[int] = field(default_factory=list)
    after_first_answer: list[int] = field(default_factory=list)

    def wrap(self, app: Any) -> Any:
        async def counted(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            self.in_flight += 1
            seen = self.after_first_answer if self.answered else self.before_first_answer
            seen.append(self.in_flight)

            async def answer(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    self.in_flight -= 1
                    self.answered = True
                await send(message)

            await app(scope, receive, answer)

        return counted


def _eight_pages_at_once(upstream: Upstream, seen: _Concurrency) -> int:
    async def go() -> int:
        # Eight pages asked at once, as the sweep's confirmations or a pass's fetchers do.
        async with upstream.client(wrap=seen.wrap) as client:
            pages = await asyncio.gather(
                *(client.page(Resource.PATIENT, n, 10) for n in range(1, 9))
            )
            return len(pages)

    return asyncio.run(go())


def test_requests_at_once_send_one_before_the_first_answer(rate_limited: Upstream) -> None:
    rate_limited.set_faults(latency=(0.05, 0.05))  # answers take a while: requests overlap
    seen = _Concurrency()
    assert _eight_pages_at_once(rate_limited, seen) == 8
    assert seen.before_first_answer == [1]
    assert rate_limited.rate_limited_count() == 0


def test_an_api_without_rate_limit_headers_is_not_paced(upstream: Upstream) -> None:
    """The first answer announces no budget: the other seven go at once, not one by one
    (which made a pass against a far-away API as slow as its latency times its pages)."""
    upstream.set_faults(latency=(0.05, 0.05))
    seen = _Concurrency()
    assert _eight_pages_at_once(upstream, seen) == 8
    assert seen.before_first_answer == [1]
    assert max(seen.after_first_answer) == 7
