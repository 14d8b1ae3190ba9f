"""local dates and live views

``appointments.local_date``: the appointment's day in ``HEALTHDOCK_TIMEZONE`` (indexed), filled
for the rows already there in the zone of the engine the migration runs on (the service's
setting; Asia/Kolkata by default), which ``mirror_settings`` records as
``local_date_timezone``. The views ``live_patients`` and ``live_appointments``: the rows not
deleted upstream, their typed columns and timestamps, without the bookkeeping.

A later revision that rebuilds ``patients`` or ``appointments`` (SQLite's batch mode copies
the table; PostgreSQL refuses to change a column a view shows) drops these views first and
creates them again after.

Revision ID: c3e8a1f05b66
Revises: b96c2e4f7a55
Create Date: 2026-12-01 17:30:00.000000
"""

from collections.abc import Sequence
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

revision: str = "c3e8a1f05b66"
down_revision: str | None = "b96c2e4f7a55"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out: a migration must not change when the code does.
_DEFAULT_ZONE = "Asia/Kolkata"
_ZONE_OPTION = "local_timezone"  # mirror.database's engine option
_SETTING = "local_date_timezone"
_BATCH = 5000
_VIEWS = {
    "live_patients": (
        "patients",
        "id, first_name, last_name, date_of_birth, gender, phone, abha_number, "
        "created_at, updated_at, mirrored_at",
    ),
    "live_appointments": (
        "appointments",
        "id, patient_id, doctor_id, date_time, local_date, duration, type, status, "
        "created_at, updated_at, mirrored_at",
    ),
}

_settings_table = sa.table(
    "mirror_settings",
    sa.column("name", sa.String()),
    sa.column("value", sa.Text()),
    sa.column("changed_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    with op.batch_alter_table("appointments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "local_date",
                sa.Date(),
                nullable=True,
                comment="date_time's day in HEALTHDOCK_TIMEZONE",
            )
        )
        batch_op.create_index(
            batch_op.f("ix_appointments_local_date"), ["local_date"], unique=False
        )
    op.create_table(
        "mirror_settings",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False,
                  comment="when value last changed"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_mirror_settings")),
    )  # fmt: skip
    zone = _zone()
    _fill_local_dates(zone)
    op.bulk_insert(
        _settings_table, [{"name": _SETTING, "value": zone.key, "changed_at": datetime.now(UTC)}]
    )
    for view, (table, columns) in _VIEWS.items():
        # Our own names, written out above: nothing from outside reaches this text.
        op.execute(f"CREATE VIEW {view} AS SELECT {columns} FROM {table} WHERE deleted_at IS NULL")  # noqa: S608


def downgrade() -> None:
    # Views first: SQLite's batch mode below renames a copy of the table, which a view on it
    # would make fail.
    for view in reversed(list(_VIEWS)):
        op.execute(f"DROP VIEW {view}")
    op.drop_table("mirror_settings")
    with op.batch_alter_table("appointments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_appointments_local_date"))
        batch_op.drop_column("local_date")


def _zone() -> ZoneInfo:
    """The zone of the engine the migration runs on (the service's HEALTHDOCK_TIMEZONE)."""
    zone = op.get_bind().get_execution_options().get(_ZONE_OPTION)
    return zone if isinstance(zone, ZoneInfo) else ZoneInfo(_DEFAULT_ZONE)


def _fill_local_dates(zone: ZoneInfo) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        known = bind.execute(
            sa.text("SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = :zone)"),
            {"zone": zone.key},
        ).scalar()
        if known:
            # One statement: the server does the work, the client's memory holds nothing. A
            # day before year 1 or after 9999 stays NULL, as the service's writers leave it.
            bind.execute(
                sa.text(
                    "UPDATE appointments SET local_date = CASE "
                    "WHEN (date_time AT TIME ZONE :zone)::date BETWEEN '0001-01-01' AND "
                    "'9999-12-31' THEN (date_time AT TIME ZONE :zone)::date END "
                    "WHERE date_time IS NOT NULL"
                ),
                {"zone": zone.key},
            )
            return
    _fill_in_batches(bind, zone)


def _fill_in_batches(bind: sa.Connection, zone: ZoneInfo) -> None:
    """SQLite (and a zone the PostgreSQL server does not know): in Python, by keyset batches of
    ids, so memory stays flat however many appointments there are."""
    read = sa.text(
        "SELECT id, date_time FROM appointments WHERE date_time IS NOT NULL AND id > :after "
        "ORDER BY id LIMIT :limit"
    ).columns(sa.column("id", sa.String()), sa.column("date_time", sa.DateTime(timezone=True)))
    write = sa.text("UPDATE appointments SET local_date = :local_date WHERE id = :id").bindparams(
        sa.bindparam("local_date", type_=sa.Date())
    )
    after = ""  # below every id: the mirror never stores an empty one
    while True:
        rows = bind.execute(read, {"after": after, "limit": _BATCH}).all()
        if not rows:
            return
        bind.execute(write, [{"id": id_, "local_date": _day(moment, zone)} for id_, moment in rows])
        after = rows[-1][0]


def _day(moment: datetime, zone: ZoneInfo) -> date | None:
    # SQLite hands back the naive UTC it stores, PostgreSQL an aware datetime.
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    try:
        return aware.astimezone(zone).date()
    except OverflowError:
        return None  # before year 1 or after 9999 there
