"""The root of the project's own errors, and the error of a configuration that cannot work.

Every error the service raises on purpose derives from :class:`MirrorError`, so an entry point
can tell "ours, with a message meant for people" from a bug. Messages name the thing and the
fix, never a secret or a patient's data.
"""

from __future__ import annotations


class MirrorError(Exception):
    """An error of healthdock-mirror's own, whose message is meant for the operator."""


class ConfigurationError(MirrorError):
    """A setting that is missing or wrong for what was asked; the message names the setting."""
