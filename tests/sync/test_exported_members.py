"""The reconciler's public surface: what the command line uses."""

from __future__ import annotations

import sync


def test_exported_members() -> None:
    assert len(sync.__all__) == len(set(sync.__all__))
    assert sorted(sync.__all__) == sorted(
        [
            "HealthDockClient", "LeaseHeld", "LeaseLost", "PassOptions", "PassResult",
            "UpstreamError", "api_client", "oauth", "pass_options", "reconcile", "refresh",
            "run_reconcile", "run_refresh", "running_scheduler"
        ]
    )  # fmt: skip
    for name in sync.__all__:
        assert getattr(sync, name) is not None


def test_the_oauth_module() -> None:
    """The OAuth protocol's requests, as the command line's login and logout use them."""
    assert sorted(sync.oauth.__all__) == sorted(
        [
            "AuthorizationRequest", "ClientRegistration", "LOGIN_HINT", "TokenEndpoint",
            "TokenEndpointUnavailable", "TokenRefused", "start_authorization"
        ]
    )  # fmt: skip
    for name in sync.oauth.__all__:
        assert getattr(sync.oauth, name) is not None
