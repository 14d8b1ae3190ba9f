"""appointments of a local day, in id order

A FHIR search of a day (``date=2026-03-05``) asks for ``local_date = ?`` in id order, a page at
a time. Indexed on ``(local_date, id)``, both databases read a page straight from the index;
on ``local_date`` alone SQLite sorted the whole day first (78,000 rows at 5M appointments:
120 ms, and 3.5 s when a status was asked too). The composite index serves every
``local_date`` query the single-column one did, which it replaces.

Revision ID: e7b3c1d9a4f2
Revises: d5a2e9c4b7f1
Create Date: 2026-12-01 18:20:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "e7b3c1d9a4f2"
down_revision: str | None = "d5a2e9c4b7f1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_appointments_local_date_id"), "appointments", ["local_date", "id"])
    op.drop_index(op.f("ix_appointments_local_date"), table_name="appointments")


def downgrade() -> None:
    op.create_index(op.f("ix_appointments_local_date"), "appointments", ["local_date"])
    op.drop_index(op.f("ix_appointments_local_date_id"), table_name="appointments")
