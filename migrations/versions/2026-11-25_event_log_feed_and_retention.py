"""event log: change feed order and payload retention

Revision ID: 5b1e0c9d4a27
Revises: aecd07aff613
Create Date: 2026-11-25 04:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5b1e0c9d4a27"
down_revision: str | None = "aecd07aff613"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.alter_column(
            "body",
            existing_type=sa.LargeBinary(),
            nullable=True,
            comment="the raw bytes as received; NULL once pruned",
            existing_comment="the raw bytes as received",
        )
        batch_op.add_column(
            sa.Column(
                "body_pruned_at",
                sa.DateTime(timezone=True),
                nullable=True,
                comment="when retention removed the raw payload",
            )
        )
        batch_op.add_column(
            sa.Column(
                "txid",
                sa.BigInteger(),
                nullable=True,
                comment="writer's transaction id (PostgreSQL)",
            )
        )
        batch_op.create_index(
            batch_op.f("ix_webhook_events_txid_seq"), ["txid", "seq"], unique=False
        )
    if op.get_bind().dialect.name == "postgresql":
        # The change feed reads PostgreSQL rows in (txid, seq) order, below the horizon of
        # ended transactions (mirror.feed). Every event stored before this revision is
        # committed (ALTER TABLE waited for its writers): 0 puts them first, in seq order.
        # Old writers still running after the upgrade would store NULL: stop them first.
        op.execute("UPDATE webhook_events SET txid = 0 WHERE txid IS NULL")


def downgrade() -> None:
    # Pruned payloads cannot come back; an empty body keeps the old NOT NULL true.
    op.execute(
        sa.text("UPDATE webhook_events SET body = :empty WHERE body IS NULL").bindparams(
            sa.bindparam("empty", b"", type_=sa.LargeBinary())
        )
    )
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_events_txid_seq"))
        batch_op.drop_column("txid")
        batch_op.drop_column("body_pruned_at")
        batch_op.alter_column(
            "body",
            existing_type=sa.LargeBinary(),
            nullable=False,
            comment="the raw bytes as received",
            existing_comment="the raw bytes as received; NULL once pruned",
        )
