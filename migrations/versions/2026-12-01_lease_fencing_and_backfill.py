"""lease fencing and backfill

The reconcile lease gets its fencing token, and each pass's row the token of its last
write; the comments of ``sync_runs.kind`` and
``sync_runs.outcome`` list the states that exist (backfill, held).

Revision ID: c41d2e7f9a10
Revises: 5b1e0c9d4a27
Create Date: 2026-12-01 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c41d2e7f9a10"
down_revision: str | None = "5b1e0c9d4a27"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "token",
                sa.BigInteger(),
                nullable=False,
                server_default="0",
                comment="fencing token",
            )
        )
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "lease_token",
                sa.BigInteger(),
                nullable=True,
                comment="fencing token of the row's last write",
            )
        )
        batch_op.alter_column(
            "kind",
            existing_type=sa.String(length=16),
            existing_nullable=False,
            comment="backfill, full or upcoming",
            existing_comment="full or upcoming",
        )
        batch_op.alter_column(
            "outcome",
            existing_type=sa.String(length=16),
            existing_nullable=False,
            comment="running, success, incomplete, failed, held",
            existing_comment="running, success, incomplete, failed",
        )


def downgrade() -> None:
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        batch_op.alter_column(
            "outcome",
            existing_type=sa.String(length=16),
            existing_nullable=False,
            comment="running, success, incomplete, failed",
            existing_comment="running, success, incomplete, failed, held",
        )
        batch_op.alter_column(
            "kind",
            existing_type=sa.String(length=16),
            existing_nullable=False,
            comment="full or upcoming",
            existing_comment="backfill, full or upcoming",
        )
        batch_op.drop_column("lease_token")
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.drop_column("token")
