"""the reconciler's OAuth grant, and logins waiting for their callback

``oauth_grants`` (one row: the tokens sealed with a key from HEALTHDOCK_SECRET_KEY, and what
``oauth status`` shows without the key) and ``oauth_logins`` (a login's callback, carried from
the receiver or the login's own listener to the login).

Revision ID: a85b1d3e6f44
Revises: f74a0c2d5e33
Create Date: 2026-12-01 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a85b1d3e6f44"
down_revision: str | None = "f74a0c2d5e33"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "oauth_grants",
        sa.Column(
            "name", sa.String(length=32), nullable=False,
            comment="the API it authorizes: healthdock",
        ),
        sa.Column("grant_id", sa.String(length=32), nullable=False,
                  comment="random, new at each login"),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("token_url", sa.Text(), nullable=False,
                  comment="the token endpoint that issued it"),
        sa.Column("scope", sa.Text(), comment="as granted"),
        sa.Column("sealed_tokens", sa.LargeBinary(), nullable=False,
                  comment="access and refresh token"),
        sa.Column("access_expires_at", _Timestamp),
        sa.Column("has_refresh_token", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False, comment="active or refused"),
        sa.Column("authorized_by", sa.String(length=64), nullable=False),
        sa.Column("authorized_at", _Timestamp, nullable=False),
        sa.Column("refreshed_at", _Timestamp),
        sa.Column("refresh_count", sa.Integer(), server_default="0", nullable=False),
        sa.CheckConstraint(
            "state IN ('active', 'refused')", name=op.f("ck_oauth_grants_state")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_oauth_grants")),
    )  # fmt: skip
    op.create_table(
        "oauth_logins",
        sa.Column("state_hash", sa.String(length=64), nullable=False,
                  comment="sha256 hex of the state"),
        sa.Column("created_at", _Timestamp, nullable=False),
        sa.Column("expires_at", _Timestamp, nullable=False),
        sa.Column("completed_at", _Timestamp),
        sa.Column("code", sa.Text(),
                  comment="the authorization code, until the login exchanges it"),
        sa.Column("error", sa.String(length=64), comment="the authorization server's error code"),
        sa.Column("issuer", sa.Text(), comment="the callback's iss (RFC 9207), if any"),
        sa.PrimaryKeyConstraint("state_hash", name=op.f("pk_oauth_logins")),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_table("oauth_logins")
    op.drop_table("oauth_grants")
