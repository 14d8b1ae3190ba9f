"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from sqlalchemy import Engine, text

from mirror import DatabaseUnavailable, current_revision, read_transaction


@get("/healthz", summary="The process is up", tags=["operations"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    summary="Database reachable and schema current",
    tags=["operations"],
    sync_to_thread=True,
)
def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, str]]:
    engine: Engine = request.app.state.engine
    try:
        read_transaction(engine, lambda connection: connection.execute(text("SELECT 1")))
        revision = current_revision(engine)
    except DatabaseUnavailable:
        return Response({"status": "database unavailable"}, status_code=503)
    if revision != request.app.state.schema_head:
        return Response(
            {"status": "schema not current; run healthdock-mirror migrate"}, status_code=503
        )
    return Response({"status": "ready"})
