"""indexes for exact names and a doctor's local days

``family:exact`` and ``given:exact`` compare the names as stored (SQLite's ``lower()`` folds
ASCII only, so a folded comparison could not find an exact non-ASCII name, and it kept
SQLite's planner off the folded index); ``practitioner=&date=`` compares a doctor's
appointments by local day.

Revision ID: d5a2e9c4b7f1
Revises: c4f1d2e8a9b3
Create Date: 2026-12-01 18:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "d5a2e9c4b7f1"
down_revision: str | None = "c4f1d2e8a9b3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = (
    ("patients", ("last_name",)),
    ("patients", ("first_name",)),
    ("appointments", ("doctor_id", "local_date")),
)


def upgrade() -> None:
    for table, columns in _INDEXES:
        op.create_index(op.f(f"ix_{table}_{'_'.join(columns)}"), table, list(columns))


def downgrade() -> None:
    for table, columns in _INDEXES:
        op.drop_index(op.f(f"ix_{table}_{'_'.join(columns)}"), table_name=table)
