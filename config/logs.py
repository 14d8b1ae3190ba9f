"""Logging for every process of the service (the command line's and the committer's): one
handler on the root logger, text or JSON lines, at the configured level, secrets masked."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

# Held at WARNING (or the configured level, if higher) whatever HEALTHDOCK_LOG_LEVEL says: what
# they say below it is noise, or data that no log line may carry.
QUIET_LOGGERS: Mapping[str, int] = {
    # Each statement's parameters at INFO and each row fetched at DEBUG: patient data.
    "sqlalchemy": logging.WARNING,
    # Its dialect on every schema check (readyz).
    "alembic.runtime.migration": logging.WARNING,
    # Every run of every job.
    "apscheduler": logging.WARNING,
    # Each request's URL, whose query can hold a search term (a patient's name).
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    # The reconciler's connections (sync/network.py): the same URLs.
    "aiohttp": logging.WARNING,
}

MASK = "[redacted]"
# Shorter "secrets" would mask ordinary words all over the logs; no real secret is this short.
_SHORTEST_SECRET = 4
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What every LogRecord has; anything else was passed as ``extra``, and the JSON lines print it.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


@dataclass(frozen=True, slots=True)
class LogOptions:
    """How a process of the service logs. One value for every process: the committer child
    cannot inherit its parent's set-up, so the receiver hands it this (``Settings.log_options``)."""

    level: str = "INFO"  # DEBUG, INFO, WARNING, ERROR
    format: str = "text"  # text or json
    secrets: tuple[str, ...] = ()  # masked should one show up in a line


def configure_logging(options: LogOptions) -> None:
    """Log to stderr at the options' level and in their format, their secrets masked."""
    level, secrets = options.level, options.secrets
    handler = logging.StreamHandler()
    if options.format == "json":
        # One object a line: timestamp (UTC, ISO 8601), level, logger, message, then any extras.
        handler.setFormatter(
            JsonFormatter(
                "{levelname}{name}{message}",
                style="{",
                rename_fields={"levelname": "level", "name": "logger"},
                # uvicorn's copy of each message with terminal colour codes: noise in JSON.
                reserved_attrs=[*RESERVED_ATTRS, "color_message"],
                timestamp=True,
            )
        )
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    handler.addFilter(SecretMask(secrets))
    handler.addFilter(QueryRedaction())
    logging.basicConfig(level=level, handlers=[handler])
    threshold = logging.getLevelNamesMapping()[level]
    for name, quiet in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(quiet, threshold))


class QueryRedaction(logging.Filter):
    """The access log (``serve --access-log``) without any request's query: a FHIR search's
    holds patient data (``family=``, ``birthdate=``), the OAuth callback's its code and state."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            record.args = tuple(
                f"{arg.partition('?')[0]}?[redacted]"
                if isinstance(arg, str) and arg.startswith("/") and "?" in arg
                else arg
                for arg in record.args
            )
        return True


class SecretMask(logging.Filter):
    """Masks configured secrets in every line a handler writes.

    Defence in depth: nothing of ours logs a secret, but a library logging at DEBUG may (a
    request's headers, a connection string); this holds for any logger in the process.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so that a secret containing another is masked whole.
        self._secrets = sorted(
            {s for s in secrets if len(s) >= _SHORTEST_SECRET}, key=len, reverse=True
        )
        self._exceptions = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # malformed: the handler reports it, without its arguments
        if self._holds_secret(message):
            record.msg, record.args = self._mask(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exceptions.formatException(record.exc_info)
        for name in ("exc_text", "stack_info"):
            text = getattr(record, name)
            if text and self._holds_secret(text):
                setattr(record, name, self._mask(text))
                if name == "exc_text":
                    # The JSON formatter would format the exception afresh, secret included.
                    record.exc_info = None
        for name in vars(record).keys() - _RECORD_ATTRIBUTES:
            value = getattr(record, name)
            if isinstance(value, str) and self._holds_secret(value):
                setattr(record, name, self._mask(value))
        return True

    def _holds_secret(self, text: str) -> bool:
        return any(secret in text for secret in self._secrets)

    def _mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text
