"""Bad configuration fails at start with a message naming the setting."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from config import SettingsError, load_settings


def test_defaults_are_safe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.database_url.startswith("sqlite:///")
    assert settings.host == "127.0.0.1"  # not reachable from the network unless asked
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.webhook_secrets == ()


def test_secrets_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHDOCK_WEBHOOK_SECRET", "new-one, old-one,")
    assert load_settings().webhook_secrets == (b"new-one", b"old-one")


def test_secrets_are_not_shown_when_settings_are_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHDOCK_WEBHOOK_SECRET", "hunter2")
    monkeypatch.setenv("HEALTHDOCK_ADMIN_TOKEN", "t0ken")
    shown = repr(load_settings()) + str(load_settings())
    assert "hunter2" not in shown
    assert "t0ken" not in shown


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("HEALTHDOCK_PORT=9123\n")
    assert load_settings().port == 9123


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        (
            "HEALTHDOCK_DATABASE_URL",
            "mysql://db/mirror",
            "HEALTHDOCK_DATABASE_URL: unknown driver 'mysql'",
        ),
        ("HEALTHDOCK_PORT", "eighty", "HEALTHDOCK_PORT"),
        ("HEALTHDOCK_PORT", "70000", "HEALTHDOCK_PORT"),
        ("HEALTHDOCK_MAX_BODY_BYTES", "10", "HEALTHDOCK_MAX_BODY_BYTES"),
        ("HEALTHDOCK_LOG_LEVEL", "chatty", "HEALTHDOCK_LOG_LEVEL"),
        ("HEALTHDOCK_TIMEZONE", "Mars/Olympus_Mons", "HEALTHDOCK_TIMEZONE: unknown time zone"),
        ("HEALTHDOCK_TIMEZONE", "../../etc/passwd", "HEALTHDOCK_TIMEZONE: unknown time zone"),
        ("HEALTHDOCK_PUBLIC_URL", "mirror.hospital.example", "HEALTHDOCK_PUBLIC_URL"),
        ("HEALTHDOCK_PUBLIC_URL", "https://h.example:notaport", "HEALTHDOCK_PUBLIC_URL"),
        ("HEALTHDOCK_PUBLIC_URL", "https://h.example/?next=x", "HEALTHDOCK_PUBLIC_URL"),
    ],
)
def test_bad_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=named):
        load_settings()


def test_the_zone_of_local_dates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HEALTHDOCK_TIMEZONE", raising=False)
    assert load_settings().local_timezone == ZoneInfo("Asia/Kolkata")
    monkeypatch.setenv("HEALTHDOCK_TIMEZONE", "America/New_York")
    assert load_settings().local_timezone == ZoneInfo("America/New_York")
    monkeypatch.setenv("HEALTHDOCK_TIMEZONE", "")  # as compose files write "unset"
    assert load_settings().local_timezone == ZoneInfo("Asia/Kolkata")


def test_the_public_url_is_the_base_of_links(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("HEALTHDOCK_PUBLIC_URL", "HEALTHDOCK_HOST", "HEALTHDOCK_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings().base_url == "http://127.0.0.1:8080"
    monkeypatch.setenv("HEALTHDOCK_HOST", "0.0.0.0")
    assert load_settings().base_url == "http://127.0.0.1:8080"
    monkeypatch.setenv("HEALTHDOCK_PUBLIC_URL", "https://mirror.hospital.example/healthdock/")
    assert load_settings().base_url == "https://mirror.hospital.example/healthdock"
