"""The fake HealthDock as the reconciler's upstream, served in process (ASGI transport)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import Engine, select

from fake_healthdock import FakeHealthDock, Faults, create_app
from mirror.events import Resource
from mirror.schema import appointments, patients
from sync.client import HealthDockClient

API_KEY = "test-api-key"
_names = itertools.count(1)


class Upstream:
    """What the tests do to HealthDock, and what they read back as the truth."""

    def __init__(self, fake: FakeHealthDock) -> None:
        self.fake = fake
        self.app = create_app(fake)

    def client(
        self, reserve: float = 0.2, wrap: Callable[[Any], Any] | None = None
    ) -> HealthDockClient:
        """A client of the fake; ``wrap`` puts an ASGI layer in front of it (a HealthDock
        that answers differently from the fake)."""
        return HealthDockClient(
            "http://healthdock.test/v1",
            API_KEY,
            reserve=reserve,
            attempts=10,
            # Retries back off for real, but briefly: the faults are seeded, not timing.
            max_backoff_seconds=0.05,
            transport=httpx.ASGITransport(app=self.app if wrap is None else wrap(self.app)),
        )

    def records(self, resource: Resource) -> Iterator[dict[str, Any]]:
        source = self.fake.patients() if resource is Resource.PATIENT else self.fake.appointments()
        for record in source:
            yield msgspec.to_builtins(record)

    def create_patient(self) -> str:
        number = next(_names)
        return self.fake.create_patient(
            {
                "first_name": "Meera",
                "last_name": f"Nair{number}",
                "date_of_birth": "1991-04-02",
                "gender": "F",
                "phone": f"+9198{number:08d}",
            }
        ).id

    def update_any_patient(self) -> str:
        patient = next(self.fake.patients())
        self.fake.update_patient(patient.id, {"phone": "+919811111111"})
        return patient.id

    def delete_any_patient(self) -> str:
        patient = list(itertools.islice(self.fake.patients(), 5))[-1]
        self.fake.delete_patient(patient.id)
        return patient.id

    def delete_patients(self, count: int) -> None:
        for patient in list(itertools.islice(self.fake.patients(), count)):
            self.fake.delete_patient(patient.id)

    def set_faults(self, **rates: Any) -> None:
        self.fake.faults = Faults(**rates)

    def rate_limited_count(self) -> int:
        return self.fake.stats.rate_limited


@pytest.fixture
def upstream() -> Upstream:
    return Upstream(
        FakeHealthDock(
            seed=7, patients=250, appointments_per_patient=1.5, api_key=API_KEY, rate_limit=None
        )
    )


@pytest.fixture
def rate_limited() -> Upstream:
    """A small limit: 12 requests a second; at a 20% reserve the pass may use 9 or 10."""
    return Upstream(
        FakeHealthDock(
            seed=3,
            patients=120,
            appointments_per_patient=1.0,
            api_key=API_KEY,
            rate_limit=12,
            window_seconds=1,
        )
    )


Document = dict[str, Any]


def mirror_of(engine: Engine, resource: Resource) -> dict[str, Document]:
    """Live records as the mirror's raw JSON, keyed by id, without the key's own name."""
    table = patients if resource is Resource.PATIENT else appointments
    with engine.connect() as connection:
        rows = connection.execute(
            select(table.c.id, table.c.raw).where(table.c.deleted_at.is_(None))
        )
        return {row.id: _content(row.raw, resource) for row in rows}


def truth_of(upstream: Upstream | FakeHealthDock, resource: Resource) -> dict[str, Document]:
    """What HealthDock holds, in the form of :func:`mirror_of`."""
    fake = upstream.fake if isinstance(upstream, Upstream) else upstream
    source = fake.patients() if resource is Resource.PATIENT else fake.appointments()
    records = (msgspec.to_builtins(record) for record in source)
    return {str(r["id"]): _content(r, resource) for r in records}


def _content(record: Document, resource: Resource) -> Document:
    return {k: v for k, v in record.items() if k not in ("id", resource.id_field)}
