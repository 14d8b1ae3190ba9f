"""The mirror's tables: the analysts' interface. Names and columns are a public contract.

Created and changed only by Alembic migrations (``migrations/``); this module is what the code
and the migrations agree on.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from mirror.states import (
    UNSETTLED,
    AuditOutcome,
    Effect,
    EventSource,
    EventStatus,
    GrantState,
    Role,
    RunKind,
    RunOutcome,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

# SQLite only auto-increments an INTEGER PRIMARY KEY (its rowid).
_Serial = BigInteger().with_variant(Integer(), "sqlite")
_Timestamp = DateTime(timezone=True)
_VersionKey = String(112)


def _mirror_columns() -> list[Column[object]]:
    """Bookkeeping shared by every mirrored table (see ``mirror.guard``)."""
    return [
        Column("created_at", _Timestamp, comment="record's created_at upstream"),
        Column("updated_at", _Timestamp, comment="record's updated_at upstream"),
        Column("raw", JSON(none_as_null=True), comment="the last applied record, verbatim"),
        Column("source_version", String(40), comment="instant of the write that set this row"),
        Column("deleted_at", _Timestamp, comment="set when deleted upstream; never removed"),
        Column("mirrored_at", _Timestamp, nullable=False, comment="when this row last changed"),
        Column("content_version", _VersionKey, comment="guard: greatest create/update"),
        Column("deleted_version", _VersionKey, comment="guard: greatest delete"),
    ]


patients = Table(
    "patients",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("first_name", Text),
    Column("last_name", Text),
    Column("date_of_birth", Date),
    Column("gender", String(16)),
    Column("phone", String(32)),
    Column("abha_number", String(32)),
    *_mirror_columns(),
    # FHIR's searches (mirror.search): exact names; prefixes by FOLDED_NAME_INDEXES below.
    Index(None, "last_name"),
    Index(None, "first_name"),
    Index(None, "date_of_birth"),
    Index(None, "abha_number"),
    Index(None, "updated_at"),
)

# Expression indexes on lower(last_name) and lower(first_name), in code-point order: their
# collation differs between the dialects, so the migration c4f1d2e8a9b3 alone creates them.
FOLDED_NAME_INDEXES = frozenset({"ix_patients_last_name_folded", "ix_patients_first_name_folded"})

appointments = Table(
    "appointments",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("patient_id", String(128)),
    Column("doctor_id", String(128)),
    Column("date_time", _Timestamp),
    Column("duration", Integer),
    Column("type", String(32)),
    Column("status", String(32)),
    *_mirror_columns(),
    # Derived, never sent by HealthDock: written with date_time by every writer (mirror.records),
    # recomputed by `healthdock-mirror local-dates` when the zone changes (mirror.local_dates).
    Column("local_date", Date, comment="date_time's day in HEALTHDOCK_TIMEZONE"),
    Index(None, "date_time"),
    Index(None, "doctor_id", "date_time"),
    Index(None, "status", "date_time"),
    Index(None, "patient_id"),
    # A local day's appointments in id order: FHIR's date search pages through them unsorted.
    Index(None, "local_date", "id"),
    Index(None, "doctor_id", "local_date"),
    Index(None, "updated_at"),
)

# The views analysts count with (created by the migration 2026-12-01_local_dates_and_live_views):
# `live_patients` and `live_appointments`, the rows of patients and appointments whose
# deleted_at IS NULL, with their id, typed columns, created_at, updated_at and mirrored_at (and
# appointments' local_date); the bookkeeping (raw, versions) stays in the tables.

# Which reconcile pass last listed each mirrored record: what a pass's sweep looks at. Apart from
# the records' rows, so that a pass that finds nothing to change writes a few bytes a record, not
# each record's whole row again (on SQLite, every page of the table into the WAL).
listed_records = Table(
    "listed_records",
    metadata,
    Column("resource", String(16), primary_key=True, comment="patient or appointment"),
    Column("record_id", String(128), primary_key=True),
    Column("run_id", BigInteger, nullable=False, comment="the last reconcile pass that listed it"),
    sqlite_with_rowid=False,
)


def _one_of(column: str, states: type[StrEnum]) -> str:
    """A CHECK constraint's condition: the column holds one of ``states``."""
    return f"{column} IN ({', '.join(repr(str(state)) for state in states)})"


# The partial index's predicate, written as its readers must write it for the index to serve.
UNSETTLED_EVENTS = f"status IN ({', '.join(repr(str(status)) for status in UNSETTLED)})"

webhook_events = Table(
    "webhook_events",
    metadata,
    Column("seq", _Serial, primary_key=True, autoincrement=True),
    Column("source", String(16), nullable=False, comment="webhook, reconcile or replay"),
    Column("dedup_key", String(160), nullable=False, comment="body id, else digest of content"),
    Column("event_id", String(128)),
    Column("event_type", String(64), nullable=False),
    Column("event_timestamp", String(64), nullable=False),
    Column("resource", String(16)),
    Column("record_id", String(128)),
    Column("version", _VersionKey),
    Column("status", String(16), nullable=False, comment="pending, applied, ignored, failed"),
    Column("effect", String(16), comment="created, updated, deleted, restored, stale"),
    Column("error", Text),
    Column("attempts", SmallInteger, nullable=False, default=0),
    Column("received_at", _Timestamp, nullable=False),
    Column("applied_at", _Timestamp),
    Column("headers", JSON, nullable=False),
    Column("body", LargeBinary, comment="the raw bytes as received; NULL once pruned"),
    Column("body_pruned_at", _Timestamp, comment="when retention removed the raw payload"),
    # PostgreSQL only: the writing transaction's id. The change feed reads an event only once
    # every transaction that could still commit a lower one has ended (see mirror.feed). The
    # column defaults to it there (a migration sets the default: SQLite has no such function),
    # so a writer that does not name it is fed all the same.
    Column("txid", BigInteger, comment="writer's transaction id (PostgreSQL)"),
    UniqueConstraint("dedup_key", "source"),
    Index(None, "received_at"),
    # Only events that need an operator (pending, failed): small, and cheap to keep up to date.
    Index(
        "ix_webhook_events_unsettled",
        "status",
        sqlite_where=text(UNSETTLED_EVENTS),
        postgresql_where=text(UNSETTLED_EVENTS),
    ),
    Index(None, "resource", "record_id"),
    Index(None, "txid", "seq"),
    CheckConstraint(_one_of("status", EventStatus), name="status"),
    CheckConstraint(_one_of("source", EventSource), name="source"),
    CheckConstraint(f"effect IS NULL OR {_one_of('effect', Effect)}", name="effect"),
)

sync_runs = Table(
    "sync_runs",
    metadata,
    Column("id", _Serial, primary_key=True, autoincrement=True),
    Column("resource", String(16), nullable=False),
    Column("kind", String(16), nullable=False, comment="backfill, full or upcoming"),
    Column("started_at", _Timestamp, nullable=False),
    Column("finished_at", _Timestamp),
    Column(
        "outcome",
        String(16),
        nullable=False,
        comment="running, success, incomplete, failed, held",
    ),
    Column("pages", Integer, nullable=False, default=0),
    Column("records", Integer, nullable=False, default=0),
    # What the pass changed: a change the webhooks did not bring (missed events), except in a
    # backfill, whose changes are the initial copy.
    Column("created", Integer, nullable=False, default=0),
    Column("updated", Integer, nullable=False, default=0),
    Column("tombstoned", Integer, nullable=False, default=0),
    Column("candidates", Integer, nullable=False, server_default="0", comment="unseen, to confirm"),
    Column("requests", Integer, nullable=False, server_default="0"),
    Column("rate_limited", Integer, nullable=False, server_default="0", comment="429s received"),
    Column("errors", Integer, nullable=False, default=0),
    Column("error", Text),
    Column("checkpoint", JSON),
    # Which taking of the reconcile lease wrote the row last: the fence its writes checked.
    Column("lease_token", BigInteger, comment="fencing token of the row's last write"),
    Index(None, "started_at"),
)

leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_at", _Timestamp, nullable=False),
    # The fencing token: one more at each taking by a new holder, kept by its renewals. Every
    # write of a pass checks it, so a holder that lost the lease can never write again.
    Column("token", BigInteger, nullable=False, server_default="0", comment="fencing token"),
)

# Named tokens for the console, the feed and the admin endpoints. The token itself is never
# stored: only its SHA-256 (tokens are 256 random bits, so a fast hash is enough).
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", _Serial, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False, comment="viewer, operator or feed"),
    Column("token_hash", String(64), nullable=False, unique=True, comment="sha256 hex"),
    Column("created_at", _Timestamp, nullable=False),
    Column("revoked_at", _Timestamp, comment="set by token revoke: refused from then on"),
    CheckConstraint(_one_of("role", Role), name="role"),
)

# Who saw which patient's data and who changed what. Append-only: a trigger (the migration's)
# refuses every UPDATE; rows are deleted only by retention. Ids only, never patient fields.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", _Serial, primary_key=True, autoincrement=True),
    Column("at", _Timestamp, nullable=False),
    Column("actor", String(64), nullable=False, comment="the token's name"),
    Column("role", String(16), nullable=False),
    Column("action", String(32), nullable=False),
    Column("target", Text, comment="record ids, event seqs, run id"),
    Column("client", String(64), comment="the client's address"),
    Column("outcome", String(16), nullable=False, comment="ok, denied or failed"),
    Index(None, "at"),
    Index(None, "actor", "at"),
    CheckConstraint(_one_of("outcome", AuditOutcome), name="outcome"),
)

# The console's server-side sessions. The cookie holds a random id; the table its SHA-256.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True, comment="sha256 hex of the cookie's id"),
    Column("actor", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("token_hash", String(64), nullable=False, comment="of the token it logged in with"),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", _Timestamp, nullable=False),
    Column("last_seen_at", _Timestamp, nullable=False),
    Column("client", String(64)),
)

# Reconciles an operator asked for from the console (sync now, release a held pass): the
# scheduler of whichever process runs it (serve or worker) takes them in order.
sync_requests = Table(
    "sync_requests",
    metadata,
    Column("id", _Serial, primary_key=True, autoincrement=True),
    Column("resource", String(16), comment="patient, appointment, or NULL for both"),
    Column("allow_mass_delete", Boolean, nullable=False, comment="release the brake"),
    Column("held_run_id", BigInteger, comment="the held pass a release is for"),
    Column("requested_by", String(64), nullable=False),
    Column("requested_at", _Timestamp, nullable=False),
    Column("started_at", _Timestamp),
    Column("finished_at", _Timestamp),
    Column("outcome", String(16), comment="the passes' worst outcome"),
    Index(None, "finished_at"),
)

# The reconciler's OAuth grant (HEALTHDOCK_API_AUTH=oauth): one row. Its tokens are sealed
# (AES-256-GCM, a key derived from HEALTHDOCK_SECRET_KEY; mirror/sealing.py), never stored as
# they are; the other columns are what `oauth status` shows without the key.
oauth_grants = Table(
    "oauth_grants",
    metadata,
    Column("name", String(32), primary_key=True, comment="the API it authorizes: healthdock"),
    Column("grant_id", String(32), nullable=False, comment="random, new at each login"),
    Column("client_id", String(255), nullable=False),
    Column("token_url", Text, nullable=False, comment="the token endpoint that issued it"),
    Column("scope", Text, comment="as granted"),
    Column("sealed_tokens", LargeBinary, nullable=False, comment="access and refresh token"),
    Column("access_expires_at", _Timestamp),
    Column("has_refresh_token", Boolean, nullable=False),
    Column("state", String(16), nullable=False, comment="active or refused"),
    Column("authorized_by", String(64), nullable=False),
    Column("authorized_at", _Timestamp, nullable=False),
    Column("refreshed_at", _Timestamp),
    Column("refresh_count", Integer, nullable=False, server_default="0"),
    CheckConstraint(_one_of("state", GrantState), name="state"),
)

# Logins waiting for their callback: `oauth login` adds one, the callback (the receiver's, or
# the login's own listener) completes it, the login takes it. The state is kept as its SHA-256;
# the code alone is worthless (PKCE: its verifier never leaves the login's process).
oauth_logins = Table(
    "oauth_logins",
    metadata,
    Column("state_hash", String(64), primary_key=True, comment="sha256 hex of the state"),
    Column("created_at", _Timestamp, nullable=False),
    Column("expires_at", _Timestamp, nullable=False),
    Column("completed_at", _Timestamp),
    Column("code", Text, comment="the authorization code, until the login exchanges it"),
    Column("error", String(64), comment="the authorization server's error code"),
    Column("issuer", Text, comment="the callback's iss (RFC 9207), if any"),
)

# Where each publisher of the change feed stands (the NATS JetStream publisher: one row a
# stream). Its cursor moves only after the broker acknowledged every event before it.
feed_publications = Table(
    "feed_publications",
    metadata,
    Column("name", String(128), primary_key=True, comment="nats:<stream>"),
    Column("cursor", Text, nullable=False, comment="a feed cursor: the last event published"),
    Column("published", BigInteger, nullable=False, server_default="0", comment="events, total"),
    Column("published_at", _Timestamp, comment="when the cursor last moved"),
    Column(
        "stream_seq",
        BigInteger,
        nullable=False,
        server_default="0",
        comment="the broker's sequence of the last event published",
    ),
)

# What the stored data was derived with, one row a setting, so that a change of configuration
# the rows do not follow yet is noticed (mirror.local_dates): `local_date_timezone`, the zone
# appointments.local_date was computed in.
mirror_settings = Table(
    "mirror_settings",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("changed_at", _Timestamp, nullable=False, comment="when value last changed"),
)

MIRRORED_TABLES = {"patient": patients, "appointment": appointments}

# Kept apart from the table's columns (the reconcile's to change): what a run may record.
sync_runs.append_constraint(CheckConstraint(_one_of("outcome", RunOutcome), name="outcome"))
sync_runs.append_constraint(CheckConstraint(_one_of("kind", RunKind), name="kind"))
