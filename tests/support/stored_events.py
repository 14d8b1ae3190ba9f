"""Events in the event log as the receiver and the reconciler store them, for replay tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select

from mirror.eventlog import IncomingEvent, dedup_key
from mirror.events import parse_event
from mirror.schema import appointments, patients, sync_runs, webhook_events
from mirror.states import EventSource
from tests.factories import encode


def incoming(
    document: dict[str, Any], *, received_at: datetime | None = None, body: bytes | None = None
) -> IncomingEvent:
    """``document`` as the receiver stores it (``body``: other bytes than its encoding)."""
    raw = encode(document) if body is None else body
    parsed = parse_event(document)
    return IncomingEvent(
        EventSource.WEBHOOK,
        dedup_key(parsed.event_id, raw),
        parsed,
        raw,
        [],
        received_at or datetime.now(UTC),
    )


def table_contents(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table a replay could touch, every column."""
    with engine.connect() as connection:
        return {
            table.name: [
                dict(row._mapping)
                for row in connection.execute(select(table).order_by(*table.primary_key))
            ]
            for table in (patients, appointments, webhook_events, sync_runs)
        }


def mirror_contents(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """The mirrored tables, every column."""
    contents = table_contents(engine)
    return {name: contents[name] for name in ("patients", "appointments")}


def events_by_seq(engine: Engine) -> dict[int, Any]:
    with engine.connect() as connection:
        return {row.seq: row for row in connection.execute(select(webhook_events))}


def refuse_patient(engine: Engine, record_id: str) -> None:
    """Make the database itself refuse writes to one patient (a real fault, not a mock)."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            for operation in ("INSERT", "UPDATE"):
                connection.exec_driver_sql(
                    f"CREATE TRIGGER refuse_patient_{operation} BEFORE {operation} ON patients "
                    f"WHEN NEW.id = '{record_id}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
        else:
            connection.exec_driver_sql(
                "CREATE FUNCTION refuse_patient() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN IF NEW.id = '{record_id}' THEN RAISE EXCEPTION 'refused'; END IF; "
                "RETURN NEW; END $$"
            )
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_patient BEFORE INSERT OR UPDATE ON patients "
                "FOR EACH ROW EXECUTE FUNCTION refuse_patient()"
            )


def fix_the_cause(engine: Engine) -> None:
    """Undo :func:`refuse_patient`."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            for operation in ("INSERT", "UPDATE"):
                connection.exec_driver_sql(f"DROP TRIGGER refuse_patient_{operation}")
        else:
            connection.exec_driver_sql("DROP TRIGGER refuse_patient ON patients")
            connection.exec_driver_sql("DROP FUNCTION refuse_patient()")
