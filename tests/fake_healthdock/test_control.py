"""The /_fake/ control endpoints."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from fake_healthdock import Faults, WebhookSwitches
from tests.fake_healthdock.harness import MakeFake, client


def test_steer_faults_switches_and_mutations_and_read_the_counts(make_fake: MakeFake) -> None:
    fake = make_fake(rate_limit=1)

    async def scenario() -> list[httpx.Response]:
        async with client(fake, api_key=None) as control:
            return [
                await control.put("/_fake/faults", json={"error_rate": 0.25, "latency": [0, 0.01]}),
                await control.put("/_fake/webhooks", json={"drop_rate": 1}),
                await control.post("/_fake/mutate", json={"count": 7}),
                await control.get("/_fake/truth"),
                await control.get("/_fake/stats"),
                await control.put("/_fake/faults", json={"error_rate": 2}),
                await control.put("/_fake/faults", json={"typo_rate": 0.1}),
                await control.post("/_fake/mutate", json={"count": "many"}),
                await control.get("/_fake/nothing"),
            ]

    faults, _switches, mutate, truth, stats, *bad = asyncio.run(scenario())
    assert faults.json()["data"]["error_rate"] == 0.25
    assert fake.faults == Faults(error_rate=0.25, latency=(0.0, 0.01))
    assert fake.webhooks.switches == WebhookSwitches(drop_rate=1.0)
    changes: list[dict[str, Any]] = mutate.json()["data"]["changes"]
    assert len(changes) == 7
    assert set(changes[0]) == {"event", "id", "timestamp"}
    assert truth.json()["data"] == fake.counts()
    assert stats.json()["data"]["webhooks"]["events"] == 7
    assert stats.json()["data"]["api"]["requests"] == 0  # control calls are not API calls
    assert [r.status_code for r in bad] == [400, 400, 400, 404]
    assert fake.faults.error_rate == 0.25  # a rejected change changes nothing


def test_a_control_token_guards_the_control_endpoints(make_fake: MakeFake) -> None:
    fake = make_fake(control_token="ops-token")

    async def scenario() -> list[int]:
        async with (
            client(fake, api_key=None) as anonymous,
            client(fake, api_key="ops-token") as ops,
        ):
            return [
                (await anonymous.get("/_fake/truth")).status_code,
                (await ops.get("/_fake/truth")).status_code,
            ]

    assert asyncio.run(scenario()) == [401, 200]
