"""What the reliability harnesses read of a reconcile pass's row."""

from __future__ import annotations

from sqlalchemy import Engine, select

from mirror.schema import sync_runs


def run_outcome(engine: Engine, run_id: int) -> str:
    """The outcome ``sync_runs`` records for the pass (``running`` until it finishes)."""
    with engine.connect() as connection:
        query = select(sync_runs.c.outcome).where(sync_runs.c.id == run_id)
        return str(connection.execute(query).scalar_one())
