"""which pass listed each record, in a table of its own

``listed_records`` takes over ``patients.seen_in_run`` and ``appointments.seen_in_run``: a pass
that finds nothing to change then writes a few bytes a record instead of each record's whole
row. The marks are copied across before the columns go.

Revision ID: a81d5c3e7f40
Revises: e7b3c1d9a4f2
Create Date: 2026-12-03 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a81d5c3e7f40"
down_revision: str | None = "e7b3c1d9a4f2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = {"patient": "patients", "appointment": "appointments"}


def upgrade() -> None:
    op.create_table(
        "listed_records",
        sa.Column(
            "resource", sa.String(length=16), nullable=False, comment="patient or appointment"
        ),
        sa.Column("record_id", sa.String(length=128), nullable=False),
        sa.Column(
            "run_id",
            sa.BigInteger(),
            nullable=False,
            comment="the last reconcile pass that listed it",
        ),
        sa.PrimaryKeyConstraint("resource", "record_id", name=op.f("pk_listed_records")),
        sqlite_with_rowid=False,
    )
    for resource, table in _TABLES.items():
        op.execute(
            f"INSERT INTO listed_records (resource, record_id, run_id) "  # noqa: S608
            f"SELECT '{resource}', id, seen_in_run FROM {table} WHERE seen_in_run IS NOT NULL"
        )
        # Both databases drop a column in place (SQLite since 3.35); a batch migration would
        # rebuild the table, and the expression indexes on patients with it.
        op.execute(f"ALTER TABLE {table} DROP COLUMN seen_in_run")


def downgrade() -> None:
    for resource, table in _TABLES.items():
        op.add_column(
            table,
            sa.Column(
                "seen_in_run", sa.BigInteger(), comment="the last reconcile pass that listed it"
            ),
        )
        op.execute(
            f"UPDATE {table} SET seen_in_run = (SELECT run_id FROM listed_records "  # noqa: S608
            f"WHERE resource = '{resource}' AND record_id = {table}.id)"
        )
    op.drop_table("listed_records")
