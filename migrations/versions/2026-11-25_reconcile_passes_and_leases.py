"""reconcile passes and leases

Revision ID: aecd07aff613
Revises: 283122d6f03d
Create Date: 2026-11-25 03:17:39.023237
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "aecd07aff613"
down_revision: str | None = "283122d6f03d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    with op.batch_alter_table("appointments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "seen_in_run",
                sa.BigInteger(),
                nullable=True,
                comment="the last reconcile pass that listed it",
            )
        )

    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "seen_in_run",
                sa.BigInteger(),
                nullable=True,
                comment="the last reconcile pass that listed it",
            )
        )

    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "candidates",
                sa.Integer(),
                nullable=False,
                server_default="0",
                comment="unseen, to confirm",
            )
        )
        batch_op.add_column(sa.Column("requests", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column(
                "rate_limited",
                sa.Integer(),
                nullable=False,
                server_default="0",
                comment="429s received",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        batch_op.drop_column("rate_limited")
        batch_op.drop_column("requests")
        batch_op.drop_column("candidates")

    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.drop_column("seen_in_run")

    with op.batch_alter_table("appointments", schema=None) as batch_op:
        batch_op.drop_column("seen_in_run")

    op.drop_table("leases")
