"""state checks and the feed's txid default

Every status, outcome, kind, source and effect column accepts only the states of
``mirror.states`` (CHECK constraints). On PostgreSQL ``webhook_events.txid`` defaults to the
writing transaction's id, so an event inserted by a writer that does not set it (a receiver
older than the change feed) is still fed instead of never.

Revision ID: d52e3f8a0b21
Revises: c41d2e7f9a10
Create Date: 2026-12-01 10:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d52e3f8a0b21"
down_revision: str | None = "c41d2e7f9a10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The values as of this revision, written out: a migration must not change when the code does.
_EVENT_CHECKS = {
    "status": "status IN ('pending', 'applied', 'ignored', 'failed')",
    "source": "source IN ('webhook', 'reconcile', 'replay')",
    "effect": (
        "effect IS NULL OR effect IN ('created', 'updated', 'deleted', 'restored', 'stale')"
    ),
}
_RUN_CHECKS = {
    "outcome": "outcome IN ('running', 'success', 'incomplete', 'failed', 'held')",
    "kind": "kind IN ('backfill', 'full', 'upcoming')",
}
_TXID_DEFAULT = "(pg_current_xact_id()::text::bigint)"


def upgrade() -> None:
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.alter_column(
            "source",
            existing_type=sa.String(length=16),
            existing_nullable=False,
            comment="webhook, reconcile or replay",
            existing_comment="webhook or reconcile",
        )
        for name, condition in _EVENT_CHECKS.items():
            batch_op.create_check_constraint(f"ck_webhook_events_{name}", condition)
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        for name, condition in _RUN_CHECKS.items():
            batch_op.create_check_constraint(f"ck_sync_runs_{name}", condition)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE webhook_events ALTER COLUMN txid SET DEFAULT {_TXID_DEFAULT}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE webhook_events ALTER COLUMN txid DROP DEFAULT")
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        for name in reversed(list(_RUN_CHECKS)):
            batch_op.drop_constraint(f"ck_sync_runs_{name}", type_="check")
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        for name in reversed(list(_EVENT_CHECKS)):
            batch_op.drop_constraint(f"ck_webhook_events_{name}", type_="check")
        batch_op.alter_column(
            "source",
            existing_type=sa.String(length=16),
            existing_nullable=False,
            comment="webhook or reconcile",
            existing_comment="webhook, reconcile or replay",
        )
