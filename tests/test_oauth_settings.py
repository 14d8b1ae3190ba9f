"""OAuth settings are checked at start: a setting that cannot work is named, never guessed."""

from __future__ import annotations

import pytest

from config import ApiAuth, SettingsError, load_settings

KEY = "k" * 32


@pytest.fixture(autouse=True)
def _no_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]


def test_oauth_without_a_client_id_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHDOCK_API_AUTH", "oauth")
    monkeypatch.setenv("HEALTHDOCK_SECRET_KEY", KEY)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value) == (
        "HEALTHDOCK_OAUTH_CLIENT_ID: required when HEALTHDOCK_API_AUTH=oauth"
    )


def test_oauth_without_a_secret_key_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHDOCK_API_AUTH", "oauth")
    monkeypatch.setenv("HEALTHDOCK_OAUTH_CLIENT_ID", "mirror-app")
    with pytest.raises(SettingsError, match="HEALTHDOCK_SECRET_KEY: required"):
        load_settings()


def test_a_complete_oauth_configuration_and_its_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHDOCK_API_AUTH", "OAuth".lower())
    monkeypatch.setenv("HEALTHDOCK_OAUTH_CLIENT_ID", "mirror-app")
    monkeypatch.setenv("HEALTHDOCK_SECRET_KEY", KEY)
    settings = load_settings()
    assert settings.api_auth is ApiAuth.OAUTH
    # The defaults' text only: no test ever sends a request there (the fake is on loopback).
    assert settings.oauth_authorize_url == "https://api.healthdock.org/oauth/authorize"
    assert settings.oauth_token_url == "https://api.healthdock.org/oauth/token"
    assert settings.oauth_redirect_uri == "http://127.0.0.1:8080/oauth/callback"
    assert settings.oauth_revocation_url is None
    assert load_settings(api_auth="api_key").api_auth is ApiAuth.API_KEY


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("HEALTHDOCK_SECRET_KEY", "too-short", "at least 32 characters"),
        ("HEALTHDOCK_API_AUTH", "password", "HEALTHDOCK_API_AUTH"),
        # Tokens over plain http to another host could be read on the way (RFC 9700 2.6).
        ("HEALTHDOCK_OAUTH_TOKEN_URL", "http://auth.example.org/token", "plain http only"),
        ("HEALTHDOCK_OAUTH_AUTHORIZE_URL", "ftp://auth.example.org/authorize", "http(s)"),
        ("HEALTHDOCK_OAUTH_REVOCATION_URL", "not a url", "HEALTHDOCK_OAUTH_REVOCATION_URL"),
        ("HEALTHDOCK_OAUTH_REDIRECT_URI", "http://mirror.example.org/oauth/callback",
         "plain http only"),
        ("HEALTHDOCK_OAUTH_REDIRECT_URI", "http://127.0.0.1:8080/callback", "/oauth/callback"),
        ("HEALTHDOCK_OAUTH_REDIRECT_URI", "http://127.0.0.1:8080/oauth/callback#x", "fragment"),
        # RFC 8252 8.3: a name may resolve elsewhere; the listener binds a literal.
        ("HEALTHDOCK_OAUTH_REDIRECT_URI", "http://localhost:8080/oauth/callback", "127.0.0.1"),
        ("HEALTHDOCK_OAUTH_REDIRECT_URI", "http://127.0.0.1:99999/oauth/callback", "port"),
        ("HEALTHDOCK_OAUTH_ISSUER", "http://auth.example.org", "plain http only"),
    ],
)  # fmt: skip
def test_bad_oauth_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert variable in str(refused.value)
    assert says in str(refused.value)
    if variable == "HEALTHDOCK_SECRET_KEY":
        assert value not in str(refused.value)


def test_loopback_and_https_endpoints_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(
        oauth_token_url="http://127.0.0.1:9000/oauth/token",
        oauth_authorize_url="https://auth.example.org/authorize",
        oauth_redirect_uri="https://mirror.example.org/oauth/callback",
        oauth_revocation_url="",
    )
    assert settings.oauth_token_url == "http://127.0.0.1:9000/oauth/token"
    assert settings.oauth_revocation_url is None


def test_the_client_secret_and_the_secret_key_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHDOCK_OAUTH_CLIENT_SECRET", "s3cret-of-the-client")
    monkeypatch.setenv("HEALTHDOCK_SECRET_KEY", "the-key-that-seals-the-tokens-0123")
    settings = load_settings()
    shown = repr(settings) + str(settings)
    assert "s3cret-of-the-client" not in shown
    assert "the-key-that-seals-the-tokens-0123" not in shown
    # ... and masked in any log line they might reach.
    assert "s3cret-of-the-client" in settings.secret_values
    assert "the-key-that-seals-the-tokens-0123" in settings.secret_values
