"""What ``status`` reports as webhook loss agrees with what the fake HealthDock dropped, on
SQLite and PostgreSQL: a receiver process gets the fake's webhooks, a fifth of them dropped,
and reconcile passes heal the rest.

The rule for changes a later event superseded: a record's loss is its *last* change. A
dropped change whose record a later delivered webhook brought anyway (a dropped create, then
a delivered update) is not healed: nothing was missing when the reconcile came. Two dropped
changes of one record are one heal. So the expected figure is the number of records whose
last webhook was dropped. The first pass, into an empty mirror, is the backfill: its initial
copy is never counted.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

from sqlalchemy import Engine

from fake_healthdock import FakeHealthDock, WebhookSwitches, serve_in_thread
from healthdock_mirror.demo import _status_line
from healthdock_mirror.status import gather_status
from mirror.database import read_transaction
from mirror.events import Resource
from mirror.states import RunKind, RunOutcome
from sync.job import run_reconcile
from tests.conftest import make_settings
from tests.factories import SECRET
from tests.support.services import serve

API_KEY = "loss-key"


def test_healed_figures_agree_with_the_webhooks_the_fake_dropped(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    with serve(database_url, tmp_path / "receiver.log") as receiver:
        fake = FakeHealthDock(
            seed=5, patients=200, appointments_per_patient=0.0, api_key=API_KEY,
            rate_limit=None, webhook_url=f"{receiver.base_url}/webhooks/healthdock",
            webhook_secret=SECRET, webhook_switches=WebhookSwitches(drop_rate=0.3),
        )  # fmt: skip
        with serve_in_thread(fake) as base_url:
            settings = make_settings(database_url, api_url=f"{base_url}/v1", api_key=API_KEY)

            def reconcile() -> list[str]:
                results = asyncio.run(run_reconcile(settings, engine, [Resource.PATIENT]))
                return [result.outcome for result in results]

            assert reconcile() == [RunOutcome.SUCCESS]
            assert gather_status(engine).healed.created == 0  # the backfill is no loss

            last_dropped: dict[str, bool] = {}  # record -> its last webhook was dropped

            def change(record_id: str, do: object) -> None:
                before = fake.webhooks.stats.dropped
                assert callable(do)
                do()
                last_dropped[record_id] = fake.webhooks.stats.dropped > before

            existing = [p.id for p in itertools.islice(fake.patients(), 60)]
            for number in range(40):
                before = fake.webhooks.stats.dropped
                new = fake.create_patient(
                    {"first_name": "Asha", "last_name": f"Rao{number}", "gender": "F",
                     "date_of_birth": "1990-01-02", "phone": f"+9197{number:08d}"}
                )  # fmt: skip
                last_dropped[new.id] = fake.webhooks.stats.dropped > before
                if number % 2:  # a later update: supersedes whatever became of the create
                    change(new.id, lambda i=new.id, n=number: fake.update_patient(
                        i, {"phone": f"+9196{n:08d}"}))  # fmt: skip
            for number, record_id in enumerate(existing[:50]):
                change(record_id, lambda i=record_id, n=number: fake.update_patient(
                    i, {"phone": f"+9195{n:08d}"}))  # fmt: skip
            for record_id in existing[50:55]:
                change(record_id, lambda i=record_id: fake.delete_patient(i))

            deadline = time.monotonic() + 60
            while fake.webhooks.pending:  # every webhook delivered (or dropped)
                assert time.monotonic() < deadline, "webhooks still pending"
                time.sleep(0.05)
            assert fake.webhooks.stats.failed == 0
            assert reconcile() == [RunOutcome.SUCCESS]

    status = gather_status(engine)
    healed = status.healed.created + status.healed.updated + status.healed.tombstoned
    expected = sum(last_dropped.values())
    print(
        f"\nwebhook loss: dropped={fake.webhooks.stats.dropped} of {fake.webhooks.stats.events} "
        f"records-last-change-dropped={expected} healed={healed}"
    )
    assert expected > 0
    assert healed == expected
    kinds = {run.kind for run in status.runs}
    assert kinds == {RunKind.BACKFILL, RunKind.FULL}
    # The demo's status line says the same.
    line = read_transaction(engine, _status_line)
    assert (
        f"healed {status.healed.created} missed creates, {status.healed.updated} updates, "
        f"{status.healed.tombstoned} deletes"
    ) in line
