"""The fake HealthDock as tests hold it: data, faults, webhooks and the truth, in one object."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TypeVar

import httpx

from fake_healthdock.clock import Clock, ist_date, system_clock
from fake_healthdock.faults import FaultDice, Faults
from fake_healthdock.mutations import Mutator
from fake_healthdock.oauth import OAuthClient, OAuthServer, OAuthSwitches
from fake_healthdock.population import Population
from fake_healthdock.ratelimit import FixedWindowLimiter, Storm
from fake_healthdock.records import Appointment, Patient
from fake_healthdock.store import Change, Store
from fake_healthdock.validation import appointment_fields, patient_fields
from fake_healthdock.webhooks import WebhookSender, WebhookSwitches

R = TypeVar("R", Patient, Appointment)


@dataclass
class ApiStats:
    requests: int = 0
    """API requests received (``/v1``), faulted ones included."""
    finished: int = 0
    """API requests done with: answered or dropped. Fewer than ``requests`` while some are
    held (a spike goes on after the client gave up): they can still drift the data."""
    rate_limited: int = 0
    """429s for an exhausted budget (a storm's are counted in ``stormed``)."""
    unauthorized: int = 0
    errors: int = 0
    """Injected 5xx responses."""
    resets: int = 0
    truncated: int = 0
    drifted: int = 0
    """Records inserted or deleted by page drift."""
    spikes: int = 0
    """Requests held by a latency spike."""
    storms: int = 0
    """429 storms begun."""
    stormed: int = 0
    """Requests answered 429 by a storm."""


class FakeHealthDock:
    """A seeded HealthDock: ``patients`` generated patients and about
    ``appointments_per_patient`` appointments each, as of 00:00 IST on ``anchor`` (default:
    the clock's date). The same seed, sizes and anchor always give the same records.

    Every mutation, from the API, from these methods or from :meth:`mutate`, sends a webhook
    to ``webhook_url`` (if set), signed with ``webhook_secret``. ``rate_limit=None`` turns the
    rate limit off. ``control_token``, when set, guards the ``/_fake/`` endpoints.

    ``/v1`` takes ``api_key`` or an OAuth access token from :attr:`oauth`, the authorization
    server at ``/oauth/``, for ``oauth_clients``; its access tokens last
    ``access_token_seconds`` and refreshes rotate refresh tokens if ``rotate_refresh_tokens``.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        patients: int = 1000,
        appointments_per_patient: float = 2.0,
        api_key: str = "fake-api-key",
        webhook_url: str | None = None,
        webhook_secret: str | bytes | None = None,
        rate_limit: int | None = 1000,
        window_seconds: float = 60.0,
        clock: Clock = system_clock,
        anchor: date | None = None,
        faults: Faults | None = None,
        webhook_switches: WebhookSwitches | None = None,
        webhook_transport: httpx.AsyncBaseTransport | None = None,
        control_token: str | None = None,
        oauth_clients: Sequence[OAuthClient] = (),
        access_token_seconds: float = 3600.0,
        rotate_refresh_tokens: bool = True,
    ) -> None:
        self.seed = seed
        self.api_key = api_key
        self.control_token = control_token
        self.clock = clock
        self.faults = faults or Faults()
        self.stats = ApiStats()
        self.population = Population(
            seed=seed,
            patients=patients,
            appointments=round(patients * appointments_per_patient),
            anchor=anchor or ist_date(clock()),
        )
        self.store = Store(self.population, clock)
        self.limiter = (
            None if rate_limit is None else FixedWindowLimiter(rate_limit, window_seconds, clock)
        )
        self.dice = FaultDice(seed)
        self.storm = Storm(clock)
        self.webhooks = WebhookSender(
            url=webhook_url,
            secret=webhook_secret,
            seed=seed,
            switches=webhook_switches,
            transport=webhook_transport,
        )
        self.oauth = OAuthServer(
            oauth_clients,
            clock,
            OAuthSwitches(
                access_token_seconds=access_token_seconds,
                rotate_refresh_tokens=rotate_refresh_tokens,
            ),
        )
        self._mutator = Mutator(self.store, seed)

    # The truth: what HealthDock holds now.

    def patient(self, patient_id: str) -> Patient | None:
        return self.store.patient(patient_id)

    def appointment(self, appointment_id: str) -> Appointment | None:
        return self.store.appointment(appointment_id)

    def patients(self) -> Iterator[Patient]:
        """Every live patient in id order, one at a time (a million do not fit in a list)."""
        return self.store.iter_patients()

    def appointments(self) -> Iterator[Appointment]:
        return self.store.iter_appointments()

    def counts(self) -> dict[str, int]:
        return {
            "patients": self.store.patients.count(),
            "appointments": self.store.appointments.count(),
        }

    # Mutations; each sends its webhook. Bad fields raise InvalidField, unknown ids NotFound.

    def create_patient(self, fields: Mapping[str, object]) -> Patient:
        valid = patient_fields(fields, partial=False, today=self.store.today())
        return self._sent(self.store.create_patient(valid), Patient)

    def update_patient(self, patient_id: str, fields: Mapping[str, object]) -> Patient:
        valid = patient_fields(fields, partial=True, today=self.store.today())
        return self._sent(self.store.update_patient(patient_id, valid), Patient)

    def delete_patient(self, patient_id: str) -> None:
        self._sent(self.store.delete_patient(patient_id), Patient)

    def create_appointment(self, fields: Mapping[str, object]) -> Appointment:
        valid = appointment_fields(fields, partial=False)
        return self._sent(self.store.create_appointment(valid), Appointment)

    def update_appointment(self, appointment_id: str, fields: Mapping[str, object]) -> Appointment:
        valid = appointment_fields(fields, partial=True)
        return self._sent(self.store.update_appointment(appointment_id, valid), Appointment)

    def delete_appointment(self, appointment_id: str) -> None:
        self._sent(self.store.delete_appointment(appointment_id), Appointment)

    def mutate(self, count: int = 1) -> list[Change]:
        """``count`` random, realistic changes (new patients, bookings, confirmations,
        cancellations, reschedules, deletions), each with its webhook."""
        changes = []
        for _ in range(count):
            change = self._mutator.random_change()
            if change is not None:
                self.webhooks.send(change)
                changes.append(change)
        return changes

    def drift(self, resource: str) -> Change | None:
        """Insert or delete a random record of ``resource`` (page drift), with its webhook."""
        change = self._mutator.drift(resource)
        if change is not None:
            self.stats.drifted += 1
            self.webhooks.send(change)
        return change

    def _sent(self, change: Change, kind: type[R]) -> R:
        self.webhooks.send(change)
        assert isinstance(change.record, kind)
        return change.record
