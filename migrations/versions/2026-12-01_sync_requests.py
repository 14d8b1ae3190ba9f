"""reconciles an operator asked for

``sync_requests``: "sync now" and "release a held pass" from the console, taken in order by
the scheduler of whichever process runs it.

Revision ID: f74a0c2d5e33
Revises: e63f9b1c4d22
Create Date: 2026-12-01 13:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f74a0c2d5e33"
down_revision: str | None = "e63f9b1c4d22"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_Serial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sync_requests",
        sa.Column("id", _Serial, autoincrement=True, nullable=False),
        sa.Column(
            "resource", sa.String(length=16), comment="patient, appointment, or NULL for both"
        ),
        sa.Column("allow_mass_delete", sa.Boolean(), nullable=False, comment="release the brake"),
        sa.Column("held_run_id", sa.BigInteger(), comment="the held pass a release is for"),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("requested_at", _Timestamp, nullable=False),
        sa.Column("started_at", _Timestamp),
        sa.Column("finished_at", _Timestamp),
        sa.Column("outcome", sa.String(length=16), comment="the passes' worst outcome"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_requests")),
    )
    with op.batch_alter_table("sync_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sync_requests_finished_at"), ["finished_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("sync_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sync_requests_finished_at"))
    op.drop_table("sync_requests")
