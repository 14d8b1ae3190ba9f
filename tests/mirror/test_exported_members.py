"""The mirror core's public surface is deliberate: what receiver, sync and the command line use.

Which packages may import it, and only through these names, is tests/test_layering.py's.
"""

from __future__ import annotations

import mirror
from mirror import audit, leases, local_dates, oauth, runs, sessions, sync_requests, tokens


def test_exported_members() -> None:
    assert len(mirror.__all__) == len(set(mirror.__all__))
    assert sorted(mirror.__all__) == sorted(
        [
            "ADMIN_ROLE", "Action", "AuditAction", "AuditOutcome", "DEFAULT_LIMIT",
            "DatabaseUnavailable", "EVENT_TYPES", "Effect", "Event", "EventCounts",
            "EventDetail", "EventFilter", "EventSource", "EventStatus", "EventSummary",
            "FeedBatch", "FeedError", "FeedEvent", "FeedPage", "GrantState", "IncomingEvent",
            "LOSS_KINDS",
            "MAX_LIMIT", "MirrorStatus", "Outcome", "PayloadError",
            "REPLAYABLE_SOURCES", "REPLAY_SKIPPED", "Receipt", "ReceiptStatus",
            "RecordCounts", "RecordRow", "RecordWrite", "ReplaySummary",
            "ReplayedEvent", "Resource", "Role", "RunKind", "RunOutcome",
            "SchemaNotCurrent", "SealError", "Sealer", "Selection", "SelectionError",
            "UNSETTLED", "Unlisted",
            "UnsettledEvent", "Version", "VersionError", "VersionKey", "apply_writes",
            "audit", "count_selected", "count_unlisted", "create_mirror_engine", "cursor_after",
            "current_revision", "decode_document", "dedup_key", "event_body",
            "event_count", "event_counts", "event_detail", "events_per_hour",
            "gather_status", "head_revision", "ingest", "is_after", "is_issued", "is_sqlite",
            "last_received",
            "leases", "list_events", "local_dates", "oauth", "oldest_unsettled", "parse_instant",
            "prepare_for_writing", "prune_event_payloads", "publications", "read_batch",
            "read_event", "read_feed",
            "read_transaction", "reconcile_event", "record_counts", "record_row",
            "record_timeline", "record_write", "replay", "require_current", "runs", "search",
            "sessions", "snapshot_transaction", "sqlite_file", "storable_headers", "store_events",
            "sync_requests", "tokens", "unavailable_as_error", "unlisted_records",
            "unreadable_event", "unsettled_counts", "upgrade", "write_transaction"
        ]
    )  # fmt: skip
    for name in mirror.__all__:
        assert getattr(mirror, name) is not None


def test_the_sync_runs_and_leases_modules() -> None:
    """Each table's reads beside its writes: one module each, as namespaces of the core."""
    assert sorted(runs.__all__) == sorted(
        [
            "COMPLETE", "Healed", "Run", "RunSummary", "RunTotals", "WHOLE_KINDS",
            "finish", "healed", "latest_runs", "loss_per_day", "previous_complete_pass",
            "record_progress", "run_count", "run_totals", "stamp_lease_token",
            "start_or_resume", "start_whole_pass"
        ]
    )  # fmt: skip
    assert sorted(leases.__all__) == sorted(
        [
            "Fence", "LeaseHeld", "LeaseLost", "acquire_lease", "lease_holder",
            "lease_holders", "release_lease", "renew_lease", "take_lease"
        ]
    )  # fmt: skip
    for module in (runs, leases):
        for name in module.__all__:
            assert getattr(module, name) is not None


def test_the_access_modules() -> None:
    """Tokens, sessions and the audit trail: each table's module, as namespaces of the core."""
    assert sorted(tokens.__all__) == sorted(
        [
            "BOOTSTRAP_NAME", "NAME_PATTERN", "Principal", "TokenError", "TokenInfo",
            "authenticate", "bootstrap_principal", "create_token", "list_tokens",
            "revoke_token", "token_hash"
        ]
    )  # fmt: skip
    assert sorted(sessions.__all__) == sorted(
        [
            "MAX_AGE", "Session", "end_session", "find_session", "start_session"
        ]
    )  # fmt: skip
    assert sorted(audit.__all__) == sorted(
        [
            "AuditEntry", "AuditRow", "MAX_TARGET", "prune_audit", "read_audit",
            "record_audit"
        ]
    )  # fmt: skip
    assert sorted(sync_requests.__all__) == [
        "STALE_AFTER", "SyncRequest", "finish_request", "put_back", "recent_requests",
        "request_sync", "take_request",
    ]  # fmt: skip
    for module in (tokens, sessions, audit, sync_requests):
        for name in module.__all__:
            assert getattr(module, name) is not None


def test_the_oauth_module() -> None:
    """The OAuth grant and the logins waiting for their callback: one module for both tables."""
    assert sorted(oauth.__all__) == sorted(
        [
            "GRANT_NAME", "GrantInfo", "LoginCallback", "OAuthTokens", "complete_login",
            "drop_login", "error_code", "forget_grant", "grant_info", "load_tokens", "mark_refused",
            "open_login", "store_grant", "store_refreshed", "take_login"
        ]
    )  # fmt: skip
    for name in oauth.__all__:
        assert getattr(oauth, name) is not None


def test_the_local_dates_module() -> None:
    """appointments.local_date in a new zone, and the zone recorded for it."""
    assert sorted(local_dates.__all__) == sorted(
        ["DEFAULT_BATCH", "LOCAL_DATE_TIMEZONE", "Recomputed", "local_date_zone",
         "recompute_local_dates", "zone_advice"]
    )  # fmt: skip
    for name in local_dates.__all__:
        assert getattr(local_dates, name) is not None
