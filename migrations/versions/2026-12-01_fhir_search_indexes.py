"""indexes for the FHIR searches

What ``/fhir`` searches filter on: names by prefix, ignoring case (expression indexes on
``lower(...)``, in code-point order so a prefix is one index range: ``COLLATE "C"`` on
PostgreSQL, SQLite's default), birth dates, ABHA numbers, and ``updated_at`` (``_lastUpdated``).
The expression indexes are the migration's alone: ``mirror.schema`` cannot declare an index
whose collation differs between the dialects (``migrations/env.py`` leaves them out of the
comparison with the schema module; ``mirror.search`` writes the matching expressions).

Revision ID: c4f1d2e8a9b3
Revises: c3e8a1f05b66
Create Date: 2026-12-01 18:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "c4f1d2e8a9b3"
down_revision: str | None = "c3e8a1f05b66"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (index, column): mirror/schema.py's FOLDED_NAME_INDEXES names the same.
_FOLDED = (
    ("ix_patients_last_name_folded", "last_name"),
    ("ix_patients_first_name_folded", "first_name"),
)
_PLAIN = (
    ("patients", "date_of_birth"),
    ("patients", "abha_number"),
    ("patients", "updated_at"),
    ("appointments", "updated_at"),
)


def upgrade() -> None:
    collate = ' COLLATE "C"' if op.get_bind().dialect.name == "postgresql" else ""
    for name, column in _FOLDED:
        op.execute(f"CREATE INDEX {name} ON patients (lower({column}){collate})")
    for table, column in _PLAIN:
        op.create_index(op.f(f"ix_{table}_{column}"), table, [column], unique=False)


def downgrade() -> None:
    for table, column in _PLAIN:
        op.drop_index(op.f(f"ix_{table}_{column}"), table_name=table)
    for name, _ in _FOLDED:
        op.execute(f"DROP INDEX {name}")
