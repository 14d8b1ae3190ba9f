"""Run-time changes to a settings dataclass (faults, webhook switches) from a JSON object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import TYPE_CHECKING, TypeVar

import msgspec

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def apply_overrides(current: T, changes: Mapping[str, object]) -> T:
    """A copy of ``current`` with ``changes`` applied; unknown names or bad values raise
    ValueError (the dataclass's own checks run on the copy)."""
    unknown = set(changes) - {field.name for field in fields(current)}
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    try:
        return msgspec.convert({**asdict(current), **changes}, type(current))
    except msgspec.ValidationError as error:
        raise ValueError(str(error)) from None
