"""mirror tables

Revision ID: 283122d6f03d
Revises:
Create Date: 2026-11-25 02:03:46.481138
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "283122d6f03d"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "appointments",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("patient_id", sa.String(length=128), nullable=True),
        sa.Column("doctor_id", sa.String(length=128), nullable=True),
        sa.Column("date_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration", sa.Integer(), nullable=True),
        sa.Column("type", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="record's created_at upstream",
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="record's updated_at upstream",
        ),
        sa.Column("raw", sa.JSON(), nullable=True, comment="the last applied record, verbatim"),
        sa.Column(
            "source_version",
            sa.String(length=40),
            nullable=True,
            comment="instant of the write that set this row",
        ),
        sa.Column(
            "deleted_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="set when deleted upstream; never removed",
        ),
        sa.Column(
            "mirrored_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="when this row last changed",
        ),
        sa.Column(
            "content_version",
            sa.String(length=112),
            nullable=True,
            comment="guard: greatest create/update",
        ),
        sa.Column(
            "deleted_version",
            sa.String(length=112),
            nullable=True,
            comment="guard: greatest delete",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_appointments")),
    )
    with op.batch_alter_table("appointments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_appointments_date_time"), ["date_time"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_appointments_doctor_id_date_time"),
            ["doctor_id", "date_time"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_appointments_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_appointments_status_date_time"), ["status", "date_time"], unique=False
        )

    op.create_table(
        "patients",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("first_name", sa.Text(), nullable=True),
        sa.Column("last_name", sa.Text(), nullable=True),
        sa.Column("date_of_birth", sa.Date(), nullable=True),
        sa.Column("gender", sa.String(length=16), nullable=True),
        sa.Column("phone", sa.String(length=32), nullable=True),
        sa.Column("abha_number", sa.String(length=32), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="record's created_at upstream",
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="record's updated_at upstream",
        ),
        sa.Column("raw", sa.JSON(), nullable=True, comment="the last applied record, verbatim"),
        sa.Column(
            "source_version",
            sa.String(length=40),
            nullable=True,
            comment="instant of the write that set this row",
        ),
        sa.Column(
            "deleted_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="set when deleted upstream; never removed",
        ),
        sa.Column(
            "mirrored_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="when this row last changed",
        ),
        sa.Column(
            "content_version",
            sa.String(length=112),
            nullable=True,
            comment="guard: greatest create/update",
        ),
        sa.Column(
            "deleted_version",
            sa.String(length=112),
            nullable=True,
            comment="guard: greatest delete",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patients")),
    )
    op.create_table(
        "sync_runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("resource", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False, comment="full or upcoming"),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "outcome",
            sa.String(length=16),
            nullable=False,
            comment="running, success, incomplete, failed",
        ),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("created", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("tombstoned", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("checkpoint", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_runs")),
    )
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sync_runs_started_at"), ["started_at"], unique=False)

    op.create_table(
        "webhook_events",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("source", sa.String(length=16), nullable=False, comment="webhook or reconcile"),
        sa.Column(
            "dedup_key",
            sa.String(length=160),
            nullable=False,
            comment="body id, else digest of content",
        ),
        sa.Column("event_id", sa.String(length=128), nullable=True),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("event_timestamp", sa.String(length=64), nullable=False),
        sa.Column("resource", sa.String(length=16), nullable=True),
        sa.Column("record_id", sa.String(length=128), nullable=True),
        sa.Column("version", sa.String(length=112), nullable=True),
        sa.Column(
            "status",
            sa.String(length=16),
            nullable=False,
            comment="pending, applied, ignored, failed",
        ),
        sa.Column(
            "effect",
            sa.String(length=16),
            nullable=True,
            comment="created, updated, deleted, restored, stale",
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.SmallInteger(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False, comment="the raw bytes as received"),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint("dedup_key", "source", name=op.f("uq_webhook_events_dedup_key_source")),
    )
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_webhook_events_received_at"), ["received_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_webhook_events_resource_record_id"),
            ["resource", "record_id"],
            unique=False,
        )
        # Only events that need an operator (pending, failed).
        batch_op.create_index(
            "ix_webhook_events_unsettled",
            ["status"],
            unique=False,
            sqlite_where=sa.text("status IN ('pending', 'failed')"),
            postgresql_where=sa.text("status IN ('pending', 'failed')"),
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_events_unsettled")
        batch_op.drop_index(batch_op.f("ix_webhook_events_resource_record_id"))
        batch_op.drop_index(batch_op.f("ix_webhook_events_received_at"))

    op.drop_table("webhook_events")
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sync_runs_started_at"))

    op.drop_table("sync_runs")
    op.drop_table("patients")
    with op.batch_alter_table("appointments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_appointments_status_date_time"))
        batch_op.drop_index(batch_op.f("ix_appointments_patient_id"))
        batch_op.drop_index(batch_op.f("ix_appointments_doctor_id_date_time"))
        batch_op.drop_index(batch_op.f("ix_appointments_date_time"))

    op.drop_table("appointments")
