"""The ordering guard: may this write change that record, and into what?

Events arrive duplicated and out of order, so the mirror must end up the same whatever the
order. Each record keeps two versions: the greatest create/update applied (whose fields the
row shows) and the greatest delete seen. A write replaces a component only when its version
is strictly greater, so applying writes is a max over each component: commutative,
associative and idempotent. A record is deleted when its delete version beats its content
version; because a delete ranks above an update at equal instants, an update at the same
moment never undoes a delete, and a strictly newer update revives the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mirror.states import Effect
from mirror.versions import Action, VersionKey


@dataclass(frozen=True, slots=True)
class RecordState:
    """What the guard needs of a mirrored row."""

    content_version: str | None = None
    deleted_version: str | None = None
    fields: Mapping[str, Any] | None = None

    @property
    def exists(self) -> bool:
        return self.content_version is not None or self.deleted_version is not None

    @property
    def deleted(self) -> bool:
        return self.deleted_version is not None and self.deleted_version > (
            self.content_version or ""
        )

    @property
    def version(self) -> str | None:
        """The greatest version that wrote this record."""
        return max(filter(None, (self.content_version, self.deleted_version)), default=None)


def merge(
    state: RecordState, action: Action, version_key: str, fields: Mapping[str, Any] | None
) -> tuple[RecordState, Effect]:
    """Apply one write to a record's state; return the new state and the write's effect."""
    if action is Action.DELETE:
        if state.deleted_version is not None and version_key <= state.deleted_version:
            return state, Effect.STALE
        # The constructor, not dataclasses.replace: this runs for every record a pass writes.
        new = RecordState(state.content_version, version_key, state.fields)
    else:
        if state.content_version is not None and version_key <= state.content_version:
            return state, Effect.STALE
        new = RecordState(version_key, state.deleted_version, fields)
        if _digest(version_key) == _digest(state.content_version) and not state.deleted:
            # The same content under a newer version (HealthDock's copy of what a webhook
            # already brought): the row keeps the greater version; nothing visible changed.
            return new, Effect.STALE
    return new, _effect(state, new)


def _digest(version_key: str | None) -> str | None:
    return None if version_key is None else VersionKey(version_key).digest


def _effect(old: RecordState, new: RecordState) -> Effect:
    if new.deleted:
        # Under a tombstone only the last-known content can change: the record stays deleted.
        return Effect.STALE if old.deleted else Effect.DELETED
    if old.deleted and not new.deleted:
        return Effect.RESTORED
    if not old.exists:
        return Effect.CREATED
    return Effect.UPDATED
