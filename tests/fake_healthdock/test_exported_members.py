"""The package's public surface is deliberate."""

from __future__ import annotations

import fake_healthdock


def test_exported_members() -> None:
    assert set(fake_healthdock.__all__) == {
        "Appointment",
        "ApiStats",
        "Change",
        "ConnectionDropped",
        "FakeHealthDock",
        "Faults",
        "InvalidField",
        "ManualClock",
        "NotFound",
        "OAuthClient",
        "OAuthServer",
        "OAuthStats",
        "OAuthSwitches",
        "Patient",
        "SIGNATURE_HEADER",
        "WebhookStats",
        "WebhookSwitches",
        "create_app",
        "serve_in_thread",
        "sign",
    }
    for name in fake_healthdock.__all__:
        assert getattr(fake_healthdock, name) is not None
