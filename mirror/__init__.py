"""The mirror core: schema, the ordering guard, and the functions that write the mirror.

Receiver, sync and replay change the database only through this package. What is named here
is its public surface (pinned by tests/mirror/test_exported_members.py); the modules behind it
are its own to rearrange.
"""

from mirror.database import (
    DatabaseUnavailable,
    create_mirror_engine,
    is_sqlite,
    read_transaction,
    sqlite_file,
    unavailable_as_error,
    write_transaction,
)
from mirror.eventlog import (
    IncomingEvent,
    Outcome,
    dedup_key,
    reconcile_event,
    storable_headers,
    store_events,
)
from mirror.events import (
    EVENT_TYPES,
    Event,
    PayloadError,
    RecordWrite,
    Resource,
    decode_document,
    read_event,
    record_write,
    unreadable_event,
)
from mirror.feed import DEFAULT_LIMIT, MAX_LIMIT, FeedError, FeedEvent, FeedPage, read_feed
from mirror.ingest import Receipt, ingest
from mirror.migrate import (
    SchemaNotCurrent,
    current_revision,
    head_revision,
    prepare_for_writing,
    require_current,
    upgrade,
)
from mirror.records import apply_writes
from mirror.replay import ReplayedEvent, ReplaySummary, Selection, SelectionError, replay
from mirror.retention import prune_event_payloads
from mirror.states import (
    UNSETTLED,
    Effect,
    EventSource,
    EventStatus,
    ReceiptStatus,
    RunKind,
    RunOutcome,
)
from mirror.versions import Action, Version, VersionError, VersionKey, parse_instant

__all__ = [
    "DEFAULT_LIMIT",
    "EVENT_TYPES",
    "MAX_LIMIT",
    "UNSETTLED",
    "Action",
    "DatabaseUnavailable",
    "Effect",
    "Event",
    "EventSource",
    "EventStatus",
    "FeedError",
    "FeedEvent",
    "FeedPage",
    "IncomingEvent",
    "Outcome",
    "PayloadError",
    "Receipt",
    "ReceiptStatus",
    "RecordWrite",
    "ReplaySummary",
    "ReplayedEvent",
    "Resource",
    "RunKind",
    "RunOutcome",
    "SchemaNotCurrent",
    "Selection",
    "SelectionError",
    "Version",
    "VersionError",
    "VersionKey",
    "apply_writes",
    "create_mirror_engine",
    "current_revision",
    "decode_document",
    "dedup_key",
    "head_revision",
    "ingest",
    "is_sqlite",
    "parse_instant",
    "prepare_for_writing",
    "prune_event_payloads",
    "read_event",
    "read_feed",
    "read_transaction",
    "reconcile_event",
    "record_write",
    "replay",
    "require_current",
    "sqlite_file",
    "storable_headers",
    "store_events",
    "unavailable_as_error",
    "unreadable_event",
    "upgrade",
    "write_transaction",
]
