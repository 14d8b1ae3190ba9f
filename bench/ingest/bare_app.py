"""The ingest benchmark's baseline: the same route on the same stack, doing no work.

It reads the whole body (as the receiver must before it can verify anything) and answers 200.
Everything between this and the receiver's number is what verifying, storing durably and
applying an event costs. Served exactly like the receiver (one uvicorn worker, access log off):

    uvicorn --app-dir bench/ingest bare_app:app --host 127.0.0.1 --port 8150 --no-access-log
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, get, post


@post("/webhooks/healthdock", status_code=200)
async def receive_webhook(request: Request[Any, Any, Any]) -> None:
    await request.body()


@get("/healthz")
async def healthz() -> dict[str, str]:
    # Only for the runner's readiness wait, never hit during a measurement.
    return {"status": "ok"}


# debug and logging_config as the receiver sets them, so neither side pays for extra middleware.
app = Litestar([receive_webhook, healthz], debug=False, logging_config=None)
