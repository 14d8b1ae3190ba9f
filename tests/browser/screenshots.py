"""The README's console screenshots, from a mirror with some history: a backfill, webhooks a
fifth of which the fake drops, a failed event, and a full pass that heals the loss.

    .venv/bin/python -m tests.browser.screenshots docs/

Writes ``console-overview.png`` and ``console-record.png`` there. Everything runs on loopback
against the fake HealthDock; nothing of a real hospital's is involved.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from fake_healthdock import FakeHealthDock
from fake_healthdock import create_app as fake_app
from fake_healthdock.webhooks import WebhookSwitches
from mirror import Resource, create_mirror_engine, upgrade
from sync import HealthDockClient, PassOptions, reconcile
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.browser.console import BOOTSTRAP, Console
from tests.factories import SECRET, event, patient
from tests.support.services import serve
from tests.support.stored_events import refuse_patient


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="console-shots-"))
    url = f"sqlite:///{work / 'mirror.db'}"
    engine = create_mirror_engine(url)
    upgrade(engine)
    with serve(url, work / "receiver.log", admin_token=BOOTSTRAP) as service:
        console = Console(service, url)
        fake = FakeHealthDock(
            seed=3, patients=400, rate_limit=None,
            webhook_url=f"{service.base_url}/webhooks/healthdock", webhook_secret=SECRET,
            webhook_switches=WebhookSwitches(drop_rate=0.2),
        )  # fmt: skip
        transport = httpx.ASGITransport(app=fake_app(fake))

        async def history() -> None:
            async def pass_over(resource: Resource) -> None:
                client = HealthDockClient("http://fake/v1", fake.api_key, transport=transport)
                async with client:
                    await reconcile(engine, client, resource, PassOptions())

            for resource in Resource:
                await pass_over(resource)  # the backfill
            fake.mutate(120)
            await fake.webhooks.drain()
            for resource in Resource:
                await pass_over(resource)  # heals what the dropped webhooks did not bring

        asyncio.run(history())
        refuse_patient(engine, "PATSHOT1")
        console.post(event("patient.created", patient("PATSHOT1")))  # stored failed
        console.post(event("patient.created", patient("PATSHOT2")))
        console.post(event("patient.updated", patient("PATSHOT2", phone="+919800000001")))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            console.sign_in(page)
            page.screenshot(path=str(out / "console-overview.png"), full_page=True)
            page.goto(f"{console.url}/records/patient/PATSHOT2")
            page.screenshot(path=str(out / "console-record.png"), full_page=True)
            browser.close()
    engine.dispose()
    print(f"wrote {out / 'console-overview.png'} and {out / 'console-record.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs"))
