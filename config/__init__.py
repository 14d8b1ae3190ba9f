"""Settings for every entry point, read once from ``HEALTHDOCK_*`` variables and ``.env``;
the project's error root; its logging set-up; and how its processes run once started.

What is named here is its public surface (pinned by tests/test_layering.py).
"""

from config.errors import ConfigurationError, MirrorError
from config.logs import LogOptions, configure_logging
from config.runtime import settle_after_startup
from config.settings import (
    DEFAULT_TIMEZONE,
    OAUTH_CALLBACK_PATH,
    ApiAuth,
    Settings,
    SettingsError,
    load_settings,
)

__all__ = [
    "DEFAULT_TIMEZONE",
    "OAUTH_CALLBACK_PATH",
    "ApiAuth",
    "ConfigurationError",
    "LogOptions",
    "MirrorError",
    "Settings",
    "SettingsError",
    "configure_logging",
    "load_settings",
    "settle_after_startup",
]
