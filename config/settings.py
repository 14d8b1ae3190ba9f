"""The one settings object. Built at an entry point and passed explicitly, never read globally."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from config.errors import ConfigurationError
from config.logs import LogOptions

DEFAULT_DATABASE_URL = "sqlite:///healthdock-mirror.db"
# HealthDock's hospitals are in India: the day an appointment falls on there.
DEFAULT_TIMEZONE = "Asia/Kolkata"
_KNOWN_DRIVERS = ("sqlite", "postgresql")
# Plain http is allowed to these hosts only (RFC 8252's loopback redirect, a local fake).
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
SECRET_KEY_MIN_LENGTH = 32
OAUTH_CALLBACK_PATH = "/oauth/callback"  # the receiver's route (receiver/oauth_callback.py)


class ApiAuth(StrEnum):
    """How the reconciler authenticates to HealthDock's API."""

    API_KEY = "api_key"  # the hospital's key, HEALTHDOCK_API_KEY
    OAUTH = "oauth"  # a third-party application's grant (healthdock-mirror oauth login)


class Settings(BaseSettings):
    """Everything the receiver, the sync worker and the command line can be tuned with."""

    model_config = SettingsConfigDict(
        env_prefix="HEALTHDOCK_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        # A rejected value may be a secret (a database URL holds its password): never echo it.
        hide_input_in_errors=True,
    )

    database_url: str = DEFAULT_DATABASE_URL
    # The zone whose calendar appointments.local_date follows (an IANA name, e.g. Asia/Kolkata).
    timezone: str = DEFAULT_TIMEZONE
    # Several secrets may be valid at once so that a rotation never rejects honest events.
    webhook_secret: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    api_url: str = "https://api.healthdock.org/v1"
    api_key: SecretStr | None = None
    admin_token: SecretStr | None = None

    # OAuth 2.0 instead of the API key (authorization code with PKCE; see sync/oauth.py).
    api_auth: ApiAuth = ApiAuth.API_KEY
    oauth_client_id: str | None = Field(default=None, min_length=1, max_length=255)
    # Confidential clients only; a public client proves itself with PKCE alone.
    oauth_client_secret: SecretStr | None = None
    oauth_authorize_url: str = "https://api.healthdock.org/oauth/authorize"
    oauth_token_url: str = "https://api.healthdock.org/oauth/token"  # noqa: S105 (a URL)
    # RFC 7009 revocation, used by `oauth logout`; unset, logout only forgets the tokens.
    oauth_revocation_url: str | None = None
    oauth_redirect_uri: str = "http://127.0.0.1:8080/oauth/callback"
    oauth_scope: str | None = None
    # The authorization server's issuer identifier (RFC 9207). Set, every callback must carry
    # it in `iss`; unset, a callback's `iss` (if any) must be the authorize URL's origin.
    oauth_issuer: str | None = None
    # The stored OAuth tokens are encrypted with a key derived from it (mirror/sealing.py).
    secret_key: SecretStr | None = None

    # The change feed on NATS JetStream (publisher/): set, serve and worker publish it.
    # Several servers comma-separated; credentials in the URL (nats://user:pass@host) are masked.
    nats_url: str | None = None
    nats_stream: str = Field(default="HEALTHDOCK_EVENTS", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # Subjects are <prefix>.<resource>.<action> (and <prefix>.other): the stream takes <prefix>.>
    nats_subject_prefix: str = Field(
        default="healthdock.events", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$", max_length=128
    )
    # The stream keeps events this long (JetStream's max_age); consumers must read within it.
    nats_max_age_days: float = Field(default=30.0, gt=0, le=3650)
    # Events a publish batch carries; the cursor moves once a batch is acknowledged.
    nats_batch: int = Field(default=256, ge=1, le=1000)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # Where clients reach the receiver (through the hospital's proxy, say): the base of the
    # links FHIR answers carry. Never taken from a request's Host header.
    public_url: str | None = None
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # The HTTP server's own limits (receiver/server.py), so that no client can hold the
    # receiver's memory, CPU or sockets. A request's head is its request line and headers.
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024)
    # From a connection's opening (or a request's first byte) until its head is complete.
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # From the end of the head until the whole body is in: 1 MiB in 30 s is 35 kB/s.
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # Proxies whose X-Forwarded-For names the client (comma-separated addresses or networks;
    # "*" trusts every peer): the address the audit trail and the sign-in throttle record.
    forwarded_allow_ips: str = "127.0.0.1"
    # Open connections at once; more are answered 503 with Retry-After and closed.
    max_connections: int = Field(default=256, ge=1, le=65_536)
    # Group commit: events arriving together share one transaction and one fsync.
    intake_max_batch: int = Field(default=256, ge=1, le=10_000)
    database_timeout_seconds: float = Field(default=5.0, gt=0)
    log_level: str = "INFO"
    # text for people reading a terminal; json (one object a line) for a log pipeline.
    log_format: str = "text"

    # Reconciliation against the API.
    api_timeout_seconds: float = Field(default=30.0, gt=0)
    api_attempts: int = Field(default=6, ge=1, le=20)
    # Share of every rate-limit window left free for the hospital's other HealthDock clients.
    sync_rate_reserve: float = Field(default=0.2, ge=0, lt=1)
    # Pages in flight when the rate budget allows: a far-away API answers a page in ~100 ms, so
    # throughput is about concurrency pages per round trip until the writer is the limit. The
    # pacer keeps the rate within the limit whatever this is; 16 took a 20k-patient pass with
    # 50-150 ms a page from 3.4 s to 2.6 s (bench/sync).
    sync_concurrency: int = Field(default=16, ge=1, le=32)
    sync_page_size: int = Field(default=100, ge=1, le=100)
    # The mass-delete brake: a pass that would tombstone more than this share of the live
    # records (and more than the floor) tombstones nothing and waits for an operator.
    sync_mass_delete_share: float = Field(default=0.05, ge=0, le=1)
    sync_mass_delete_floor: int = Field(default=10, ge=0)
    sync_lease_seconds: float = Field(default=120.0, gt=0)
    sync_interval_minutes: float = Field(default=60.0, gt=0)
    # A run cut short (rate limits, errors) is retried this soon, not a full interval later.
    sync_retry_minutes: float = Field(default=5.0, gt=0)
    # The frequent short job: appointments of today and the coming days.
    sync_upcoming_minutes: float = Field(default=5.0, gt=0)
    sync_upcoming_days: int = Field(default=2, ge=0, le=31)
    # How often the scheduler looks for reconciles an operator asked for in the console.
    sync_request_poll_seconds: float = Field(default=5.0, gt=0, le=3600)
    # Raw payloads of applied events are removed this many days after they were applied;
    # unset keeps them forever. Failed, pending and ignored events always keep theirs.
    event_retention_days: int | None = Field(default=None, gt=0)
    # Audit rows older than this many days are deleted (daily); unset keeps them forever.
    # At least 30: a trail that forgets within days answers no compliance question.
    audit_retention_days: int | None = Field(default=None, ge=30)
    # A console session ends after this long without a request.
    console_session_minutes: float = Field(default=30.0, gt=0, le=24 * 60)
    # The console's cookies carry Secure: browsers send them over HTTPS and to localhost only.
    # Off only for a console reached over plain HTTP on another address (not recommended).
    console_secure_cookies: bool = True

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        scheme = value.split(":", 1)[0].split("+", 1)[0].lower()
        if scheme not in _KNOWN_DRIVERS:
            raise ValueError(f"unknown driver {scheme!r}; use sqlite:/// or postgresql://")
        try:
            make_url(value)
        except (ArgumentError, ValueError):
            # The parser's own message can quote the URL, and with it the password.
            raise ValueError(
                "not a database URL; use sqlite:///path or postgresql://user:password@host/db"
            ) from None
        return value

    @field_validator("timezone", mode="before")
    @classmethod
    def _known_zone(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return DEFAULT_TIMEZONE  # `HEALTHDOCK_TIMEZONE=`, as compose files write it
        if not isinstance(value, str):
            return value
        try:
            ZoneInfo(value.strip())
        except (ZoneInfoNotFoundError, ValueError, OSError):
            # ValueError: not a zone's name at all (a path, a file that is no zone).
            raise ValueError(
                f"unknown time zone {value.strip()!r}; use an IANA name such as Asia/Kolkata"
            ) from None
        return value.strip()

    @field_validator("oauth_authorize_url", "oauth_token_url")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return _https_or_loopback(value, what="endpoint")

    @field_validator("oauth_revocation_url", "oauth_issuer")
    @classmethod
    def _optional_endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return _https_or_loopback(value, what="endpoint")

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            parts = urlsplit(value.strip())
            port = parts.port
        except ValueError:
            raise ValueError("not a URL; give e.g. https://mirror.hospital.example") from None
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(
                "not an absolute http(s) URL; give e.g. https://mirror.hospital.example"
            )
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("a base URL has no query, fragment or credentials")
        del port  # read only to check it is a number
        return value.strip().rstrip("/")

    @property
    def base_url(self) -> str:
        """The receiver's URL as its clients reach it: HEALTHDOCK_PUBLIC_URL, else the address
        it binds (a wildcard bind names this host's loopback)."""
        if self.public_url is not None:
            return self.public_url
        wildcard = self.host in ("0.0.0.0", "::", "")  # noqa: S104 (recognized, not bound)
        host = "127.0.0.1" if wildcard else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @field_validator("oauth_redirect_uri")
    @classmethod
    def _redirect_uri(cls, value: str) -> str:
        uri = _https_or_loopback(value, what="redirect URI")
        parts = urlsplit(uri)
        if parts.scheme == "http" and parts.hostname == "localhost":
            # RFC 8252 8.3: "localhost" may resolve elsewhere; a literal is what is listened on.
            raise ValueError("use the loopback literal 127.0.0.1 (or [::1]), not localhost")
        if parts.fragment or parts.query:
            raise ValueError("a redirect URI has no query or fragment")
        if parts.path != OAUTH_CALLBACK_PATH:
            raise ValueError(f"its path must be {OAUTH_CALLBACK_PATH}, where the receiver takes it")
        return uri

    @field_validator("nats_url")
    @classmethod
    def _nats_servers(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        for server in value.split(","):
            try:
                parts = urlsplit(server.strip())
                parts.port  # noqa: B018 (parsing the port is the check)
            except ValueError:
                raise ValueError("not a NATS URL; give nats://host:4222") from None
            if parts.scheme not in ("nats", "tls") or not parts.hostname:
                raise ValueError("not a NATS URL; give nats://host:4222 (or tls://)")
        return value.strip()

    @field_validator("oauth_client_id", "oauth_scope", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("secret_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < SECRET_KEY_MIN_LENGTH:
            raise ValueError(f"use at least {SECRET_KEY_MIN_LENGTH} characters")
        return value

    @model_validator(mode="after")
    def _oauth_complete(self) -> Settings:
        if self.api_auth is ApiAuth.OAUTH and self.missing_for_oauth:
            names = ", ".join(self.missing_for_oauth)
            raise ValueError(f"{names}: required when HEALTHDOCK_API_AUTH=oauth")
        return self

    @property
    def missing_for_oauth(self) -> list[str]:
        """The settings OAuth needs and lacks, by their variables' names."""
        needed = {"oauth_client_id": self.oauth_client_id, "secret_key": self.secret_key}
        return [f"HEALTHDOCK_{name.upper()}" for name, value in needed.items() if value is None]

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("use one of DEBUG, INFO, WARNING, ERROR")
        return level

    @field_validator("log_format")
    @classmethod
    def _known_log_format(cls, value: str) -> str:
        log_format = value.lower()
        if log_format not in {"text", "json"}:
            raise ValueError("use text or json")
        return log_format

    @field_validator("event_retention_days", "audit_retention_days", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `HEALTHDOCK_EVENT_RETENTION_DAYS=` (as compose files write it) keeps payloads forever.
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def reconciles(self) -> bool:
        """Whether the API can be read: an API key, or OAuth (its grant is checked per pass)."""
        return self.api_auth is ApiAuth.OAUTH or self.api_key is not None

    @property
    def local_timezone(self) -> ZoneInfo:
        """The zone of ``appointments.local_date`` (``HEALTHDOCK_TIMEZONE``)."""
        return ZoneInfo(self.timezone)

    @property
    def webhook_secrets(self) -> tuple[bytes, ...]:
        return tuple(s.get_secret_value().encode() for s in self.webhook_secret)

    @property
    def secret_values(self) -> tuple[str, ...]:
        """Every configured secret as text (the database password included): what the logs
        mask should it ever show up in a line."""
        secrets = [*self.webhook_secret, self.api_key, self.admin_token,
                   self.oauth_client_secret, self.secret_key]  # fmt: skip
        values = [s.get_secret_value().strip() for s in secrets if s is not None]
        values.append(make_url(self.database_url).password or "")
        for server in (self.nats_url or "").split(","):
            parts = urlsplit(server.strip())
            # nats://TOKEN@host is token authentication: the user part is a secret too.
            values.extend((parts.password or "", parts.username or ""))
        return tuple(value for value in values if value)

    @property
    def nats_servers(self) -> list[str]:
        return [server.strip() for server in (self.nats_url or "").split(",") if server.strip()]

    @property
    def log_options(self) -> LogOptions:
        """How every process of the service logs, with every secret masked."""
        return LogOptions(self.log_level, self.log_format, self.secret_values)

    @property
    def database_url_shown(self) -> str:
        """The database URL to show people: its password, if any, masked."""
        return make_url(self.database_url).render_as_string(hide_password=True)

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # Secrets are SecretStr and print masked; the database URL is a plain string.
        for name, value in super().__repr_args__():
            if name == "database_url":
                value = self.database_url_shown
            elif name == "nats_url" and value is not None:
                value = ",".join(_without_credentials(server) for server in self.nats_servers)
            yield name, value


def _without_credentials(server: str) -> str:
    parts = urlsplit(server)
    if parts.username is None and parts.password is None:
        return server
    return parts._replace(netloc=f"***@{parts.netloc.rpartition('@')[2]}").geturl()


def _https_or_loopback(value: str, *, what: str) -> str:
    """An absolute https URL, or http to a loopback address (RFC 9700 2.6, RFC 8252 7.3)."""
    try:
        parts = urlsplit(value.strip())
        host = parts.hostname
    except ValueError:
        raise ValueError(f"not a URL; give an absolute https {what}") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError(f"not an absolute http(s) URL; give an https {what}")
    if parts.scheme == "http" and host not in _LOOPBACK_HOSTS:
        raise ValueError(f"plain http only to a loopback address; give an https {what}")
    try:
        parts.port  # noqa: B018 (parsing the port is the check)
    except ValueError:
        raise ValueError(f"the port is not a port number; give an https {what}") from None
    return value.strip()


class SettingsError(ConfigurationError):
    """Configuration that cannot start the service; the message names each bad setting."""


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (and ``overrides``), naming every bad setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            # A rule across settings names its variables in its own message.
            problems.append(f"HEALTHDOCK_{field.upper()}: {message}" if field else message)
        raise SettingsError("; ".join(problems)) from None
