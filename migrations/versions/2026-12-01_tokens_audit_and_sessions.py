"""named tokens, the audit trail and console sessions

``api_tokens`` (a hash per named token and its role), ``audit_log`` (append-only: a trigger
refuses every UPDATE on both databases; retention alone deletes) and ``console_sessions``
(server-side sessions of the operator console).

Revision ID: e63f9b1c4d22
Revises: d52e3f8a0b21
Create Date: 2026-12-01 12:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e63f9b1c4d22"
down_revision: str | None = "d52e3f8a0b21"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_Serial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Timestamp = sa.DateTime(timezone=True)
_APPEND_ONLY = "audit_log is append-only"


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", _Serial, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False, comment="viewer, operator or feed"),
        sa.Column("token_hash", sa.String(length=64), nullable=False, comment="sha256 hex"),
        sa.Column("created_at", _Timestamp, nullable=False),
        sa.Column("revoked_at", _Timestamp, comment="set by token revoke: refused from then on"),
        sa.CheckConstraint(
            "role IN ('viewer', 'operator', 'feed')", name=op.f("ck_api_tokens_role")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("name", name=op.f("uq_api_tokens_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", _Serial, autoincrement=True, nullable=False),
        sa.Column("at", _Timestamp, nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False, comment="the token's name"),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("target", sa.Text(), comment="record ids, event seqs, run id"),
        sa.Column("client", sa.String(length=64), comment="the client's address"),
        sa.Column("outcome", sa.String(length=16), nullable=False, comment="ok, denied or failed"),
        sa.CheckConstraint(
            "outcome IN ('ok', 'denied', 'failed')", name=op.f("ck_audit_log_outcome")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_actor_at"), ["actor", "at"], unique=False)
    op.create_table(
        "console_sessions",
        sa.Column(
            "id_hash", sa.String(length=64), nullable=False, comment="sha256 hex of the cookie's id"
        ),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column(
            "token_hash",
            sa.String(length=64),
            nullable=False,
            comment="of the token it logged in with",
        ),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", _Timestamp, nullable=False),
        sa.Column("last_seen_at", _Timestamp, nullable=False),
        sa.Column("client", sa.String(length=64)),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_console_sessions")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE ON audit_log "
            f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
        )


def downgrade() -> None:
    op.execute(
        "DROP TRIGGER IF EXISTS audit_log_append_only"
        + (" ON audit_log" if op.get_bind().dialect.name == "postgresql" else "")
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    op.drop_table("console_sessions")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_actor_at"))
        batch_op.drop_index(batch_op.f("ix_audit_log_at"))
    op.drop_table("audit_log")
    op.drop_table("api_tokens")
