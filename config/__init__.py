"""Settings for every entry point, read once from ``HEALTHDOCK_*`` variables and ``.env``."""

from config.settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "load_settings"]
