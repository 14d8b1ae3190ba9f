"""where each publisher of the change feed stands

``feed_publications``: the NATS JetStream publisher's cursor (one row a stream), moved only
after the broker acknowledged.

Revision ID: b96c2e4f7a55
Revises: a85b1d3e6f44
Create Date: 2026-12-01 16:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b96c2e4f7a55"
down_revision: str | None = "a85b1d3e6f44"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feed_publications",
        sa.Column("name", sa.String(length=128), nullable=False, comment="nats:<stream>"),
        sa.Column("cursor", sa.Text(), nullable=False,
                  comment="a feed cursor: the last event published"),
        sa.Column("published", sa.BigInteger(), server_default="0", nullable=False,
                  comment="events, total"),
        sa.Column("published_at", sa.DateTime(timezone=True),
                  comment="when the cursor last moved"),
        sa.Column("stream_seq", sa.BigInteger(), server_default="0", nullable=False,
                  comment="the broker's sequence of the last event published"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_feed_publications")),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_table("feed_publications")
