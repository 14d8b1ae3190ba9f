"""Webhooks: signed events for every change, and the switches that make delivery unreliable."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time

import msgspec
import pytest

from fake_healthdock import FakeHealthDock, WebhookSwitches
from tests.fake_healthdock.harness import SECRET, MakeFake, Receiver, client, with_receiver


def _deliver(fake: FakeHealthDock, within: float = 5.0) -> None:
    asyncio.run(fake.webhooks.drain(within=within))


def test_a_mutation_arrives_signed_with_the_record_under_its_key(make_fake: MakeFake) -> None:
    receiver = Receiver()
    fake = with_receiver(make_fake, receiver)

    async def scenario() -> None:
        async with client(fake) as api:
            await api.put("/v1/patients/PAT000004", json={"phone": "+919811122233"})
        await fake.webhooks.drain(within=5)

    asyncio.run(scenario())
    [(headers, body)] = receiver.deliveries
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["x-healthdock-signature"] == expected
    assert headers["content-type"] == "application/json"
    event = json.loads(body)
    patient = fake.patient("PAT000004")
    assert patient is not None
    assert list(event) == ["id", "event", "timestamp", "data"]
    assert event["id"].startswith("evt_")
    assert event["event"] == "patient.updated"
    assert event["timestamp"] == patient.updated_at == "2026-01-01T00:00:00.000Z"
    assert event["data"] == {
        "patient_id": "PAT000004",
        **{k: v for k, v in json.loads(json.dumps(_fields(patient))).items() if k != "id"},
    }
    assert body == json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    assert fake.webhooks.stats.delivered == 1


def test_every_kind_of_change_has_its_event(make_fake: MakeFake) -> None:
    receiver = Receiver()
    fake = with_receiver(make_fake, receiver)
    patient = fake.create_patient(
        {
            "first_name": "Ravi",
            "last_name": "Das",
            "date_of_birth": "1970-01-01",
            "gender": "M",
            "phone": "+919830011223",
        }
    )
    fake.update_patient(patient.id, {"abha_number": "12345678901234"})
    booked = fake.create_appointment(
        {
            "patient_id": patient.id,
            "doctor_id": "DOC002",
            "date_time": "2026-01-03T11:00:00+05:30",
        }
    )
    fake.update_appointment(booked.id, {"status": "confirmed"})
    fake.update_appointment(
        booked.id, {"status": "completed", "duration": 30}
    )  # unchanged duration
    fake.update_appointment(booked.id, {"status": "scheduled"})
    fake.update_appointment(booked.id, {"status": "cancelled", "duration": 45})
    fake.delete_appointment(booked.id)
    fake.delete_patient(patient.id)
    _deliver(fake)
    events = receiver.events()
    assert [e["event"] for e in events] == [
        "patient.created",
        "patient.updated",
        "appointment.created",
        "appointment.confirmed",
        "appointment.completed",
        "appointment.updated",
        "appointment.updated",
        "appointment.deleted",
        "patient.deleted",
    ]
    assert events[2]["data"]["appointment_id"] == booked.id
    assert events[2]["data"]["patient_id"] == patient.id
    assert events[-1]["data"]["patient_id"] == patient.id
    stamps = [e["timestamp"] for e in events[2:8]]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)


def test_random_mutations_send_their_events(make_fake: MakeFake) -> None:
    receiver = Receiver()
    fake = with_receiver(make_fake, receiver)
    changes = fake.mutate(40)
    _deliver(fake)
    assert [(e["event"], e["timestamp"]) for e in receiver.events()] == [
        (c.event, c.timestamp) for c in changes
    ]
    assert len({c.event for c in changes}) >= 6


def test_drop_rate_drops(make_fake: MakeFake) -> None:
    receiver = Receiver()
    fake = with_receiver(make_fake, receiver, webhook_switches=WebhookSwitches(drop_rate=0.5))
    fake.mutate(60)
    _deliver(fake)
    stats = fake.webhooks.stats
    assert 10 < stats.dropped < 50
    assert len(receiver.deliveries) == stats.delivered == 60 - stats.dropped


def test_duplicate_rate_sends_the_same_bytes_twice(make_fake: MakeFake) -> None:
    receiver = Receiver()
    fake = with_receiver(make_fake, receiver, webhook_switches=WebhookSwitches(duplicate_rate=1.0))
    fake.mutate(10)
    _deliver(fake)
    bodies = [body for _, body in receiver.deliveries]
    assert len(bodies) == 20
    assert len(set(bodies)) == 10
    assert all(bodies.count(body) == 2 for body in bodies)
    assert fake.webhooks.stats.duplicated == 10


def test_reorder_shuffles_windows_of_events(make_fake: MakeFake) -> None:
    receiver = Receiver()
    fake = with_receiver(make_fake, receiver, webhook_switches=WebhookSwitches(reorder=5))
    changes = fake.mutate(20)
    _deliver(fake)
    sent = [(c.event, c.timestamp, c.record.id) for c in changes]
    got = [
        (
            e["event"],
            e["timestamp"],
            e["data"].get("patient_id")
            if e["event"].startswith("patient")
            else e["data"]["appointment_id"],
        )
        for e in receiver.events()
    ]
    assert sorted(got) == sorted(sent)
    assert got != sent
    for window in range(0, 20, 5):  # shuffled within each window of five, never across
        assert sorted(got[window : window + 5]) == sorted(sent[window : window + 5])


def test_switch_outcomes_repeat_with_the_seed(make_fake: MakeFake) -> None:
    def outcome(seed: int) -> list[bytes]:
        receiver = Receiver()
        switches = WebhookSwitches(drop_rate=0.3, duplicate_rate=0.3, reorder=4)
        fake = with_receiver(make_fake, receiver, seed=seed, webhook_switches=switches)
        fake.mutate(25)
        _deliver(fake)
        return [body for _, body in receiver.deliveries]

    assert outcome(1) == outcome(1)
    assert outcome(1) != outcome(2)


def test_delay_holds_each_event_back(make_fake: MakeFake) -> None:
    receiver = Receiver()
    fake = with_receiver(make_fake, receiver, webhook_switches=WebhookSwitches(delay=(0.1, 0.1)))
    fake.mutate(2)
    started = time.monotonic()
    _deliver(fake)
    assert time.monotonic() - started >= 0.1
    assert len(receiver.deliveries) == 2


def test_failed_deliveries_are_retried_then_given_up(make_fake: MakeFake) -> None:
    receiver = Receiver(statuses=[500, 503, 200, 500, 500, 500])
    switches = WebhookSwitches(max_attempts=3, retry_backoff=0.01)
    fake = with_receiver(make_fake, receiver, webhook_switches=switches)
    fake.mutate(1)
    _deliver(fake)
    fake.mutate(1)
    _deliver(fake)
    stats = fake.webhooks.stats
    assert (stats.attempts, stats.delivered, stats.retried, stats.failed) == (6, 1, 4, 1)
    first = [body for _, body in receiver.deliveries[:3]]
    assert len(set(first)) == 1  # a retry is the same event, byte for byte


def test_unreachable_receivers_are_retried_and_drain_has_a_deadline(make_fake: MakeFake) -> None:
    switches = WebhookSwitches(max_attempts=50, retry_backoff=0.01)
    fake = make_fake(webhook_url="http://127.0.0.1:9/nobody-listens", webhook_switches=switches)
    fake.mutate(1)
    with pytest.raises(TimeoutError):
        _deliver(fake, within=0.3)
    assert fake.webhooks.stats.retried >= 2
    assert fake.webhooks.pending == 1


def test_without_a_url_changes_still_happen_and_count_as_unsent(make_fake: MakeFake) -> None:
    fake = make_fake()
    changes = fake.mutate(5)
    _deliver(fake)
    assert fake.webhooks.stats.unsent == fake.webhooks.stats.events == len(changes) == 5


def _fields(record: object) -> dict[str, object]:
    return msgspec.to_builtins(record)  # type: ignore[no-any-return]
