"""Settings for every entry point, read once from ``HEALTHDOCK_*`` variables and ``.env``."""

from config.errors import ConfigurationError, MirrorError
from config.settings import Settings, SettingsError, load_settings

__all__ = ["ConfigurationError", "MirrorError", "Settings", "SettingsError", "load_settings"]
