"""Every state the mirror records, in one place: the values of its status and kind columns.

Each is a ``StrEnum``: a member is the string stored in the database (and shown by ``status``
and the feed), so it compares equal to what a query returns. The schema's CHECK
constraints are built from them.
"""

from __future__ import annotations

from enum import StrEnum


class EventStatus(StrEnum):
    """``webhook_events.status``: what became of a stored event."""

    PENDING = "pending"  # stored, not yet applied (no writer leaves one so today)
    APPLIED = "applied"
    IGNORED = "ignored"  # an event type the mirror does not support yet: replayable later
    FAILED = "failed"  # could not be read or applied: waits for an operator's replay


# Events that need an operator; the event log keeps a partial index of them.
UNSETTLED = (EventStatus.PENDING, EventStatus.FAILED)


class ReceiptStatus(StrEnum):
    """What the receiver answers for one event: its stored status, or that it was a redelivery."""

    APPLIED = "applied"
    IGNORED = "ignored"
    FAILED = "failed"
    DUPLICATE = "duplicate"


class EventSource(StrEnum):
    """``webhook_events.source``: who found the change."""

    WEBHOOK = "webhook"
    RECONCILE = "reconcile"  # a change a reconcile pass discovered (a missed event)
    REPLAY = "replay"  # an operator's replay changed the mirror: fed like any other change


class Effect(StrEnum):
    """``webhook_events.effect``: what one write did to its record (the ordering guard's word)."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    RESTORED = "restored"  # a tombstoned record written again by a newer version
    STALE = "stale"  # older than what the record holds: nothing changed


class RunOutcome(StrEnum):
    """``sync_runs.outcome``."""

    RUNNING = "running"
    SUCCESS = "success"
    INCOMPLETE = "incomplete"  # cut short (rate limits, errors, a lost lease): retried soon
    FAILED = "failed"  # died of an unexpected error (a bug): retried soon, and logged
    HELD = "held"  # the mass-delete brake stopped the sweep: waits for an operator


class RunKind(StrEnum):
    """``sync_runs.kind``: what a pass covers."""

    BACKFILL = "backfill"  # the first complete pass over a resource: its initial copy, not loss
    FULL = "full"
    UPCOMING = "upcoming"  # appointments of the coming days only


# Passes whose changes are webhook loss (what webhooks should have brought): not a backfill's.
LOSS_KINDS = (RunKind.FULL, RunKind.UPCOMING)


class Role(StrEnum):
    """``api_tokens.role``: what a named token may do."""

    VIEWER = "viewer"  # the console's pages
    OPERATOR = "operator"  # a viewer who may also act: replay, sync now, release a held pass
    FEED = "feed"  # machine reads: GET /events (and FHIR)


# The bootstrap token (HEALTHDOCK_ADMIN_TOKEN) holds every role; its audit rows say so.
ADMIN_ROLE = "admin"


class AuditOutcome(StrEnum):
    """``audit_log.outcome``."""

    OK = "ok"
    DENIED = "denied"  # refused: a wrong token, a role that may not, a bad CSRF token
    FAILED = "failed"  # allowed, but it did not complete (the database away, a bad input)


class AuditAction(StrEnum):
    """``audit_log.action``: each request that returns patient data or changes state."""

    FEED_READ = "feed.read"
    CONSOLE_LOGIN = "console.login"
    CONSOLE_LOGOUT = "console.logout"
    RECORD_VIEW = "record.view"
    PAYLOAD_SHOW = "event.payload"
    REPLAY = "replay"
    SYNC_REQUEST = "sync.request"
    SYNC_RELEASE = "sync.release"
    ACCESS_DENIED = "access.denied"  # a known token whose role may not, or a bad CSRF token
    AUDIT_PRUNE = "audit.prune"  # retention deleted rows of this trail
    TOKEN_CREATE = "token.create"  # noqa: S105 (an action's name, not a secret)
    TOKEN_REVOKE = "token.revoke"  # noqa: S105
    OAUTH_LOGIN = "oauth.login"  # the reconciler authorized as a third-party application
    OAUTH_LOGOUT = "oauth.logout"
    FHIR_READ = "fhir.read"  # GET /fhir/<type>/<id>: the record's id
    FHIR_SEARCH = "fhir.search"  # GET /fhir/<type>?...: the ids of the page answered
    FHIR_EXPORT = "fhir.export"  # export fhir: what it wrote, and since when


class GrantState(StrEnum):
    """``oauth_grants.state``: whether the stored OAuth grant can still be refreshed."""

    ACTIVE = "active"
    # HealthDock refused its refresh token (invalid_grant): only `oauth login` replaces it,
    # so passes stop asking the token endpoint until then.
    REFUSED = "refused"
