"""The console's sync actions (operators only): sync now, and release a held pass.

Neither runs a reconcile here: each leaves a request (``mirror.sync_requests``) that the
scheduler of whichever process runs it (``serve`` with an API key, or a ``worker``) takes within
``HEALTHDOCK_SYNC_REQUEST_POLL_SECONDS``, under the lease like any reconcile. The audit row
(``sync.request`` or ``sync.release``) is written with the request, in its transaction.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Request, post
from litestar.params import PathParameter, URLEncodedBody
from litestar.response import Redirect
from sqlalchemy import Engine

from mirror import (
    AuditAction,
    Resource,
    Role,
    RunOutcome,
    audit,
    read_transaction,
    runs,
    sync_requests,
    write_transaction,
)
from receiver.access import client_address
from receiver.console.auth import check_csrf, signed_in
from receiver.console.pages import BadParameter

_OPERATOR = [signed_in(Role.OPERATOR)]


@dataclass
class SyncForm:
    csrf_token: str = ""
    resource: str = ""


def _request(
    request: Request[Any, Any, Any],
    resource: str | None,
    *,
    release: bool,
    target: str,
    held_run_id: int | None = None,
) -> int:
    principal = request.state.principal
    entry = audit.AuditEntry(principal.name, principal.role,
                             AuditAction.SYNC_RELEASE if release else AuditAction.SYNC_REQUEST,
                             target, client_address(request))  # fmt: skip

    def leave(connection: Any) -> int:
        request_id = sync_requests.request_sync(
            connection, resource, allow_mass_delete=release, actor=principal.name,
            held_run_id=held_run_id,
        )  # fmt: skip
        audit.record_audit(connection, entry)
        return request_id

    engine: Engine = request.app.state.engine
    return write_transaction(engine, leave)


@post("/sync", guards=_OPERATOR, sync_to_thread=True, status_code=303)
def sync_now(request: Request[Any, Any, Any], data: URLEncodedBody[SyncForm]) -> Redirect:
    check_csrf(request, data.csrf_token)
    if data.resource and data.resource not in {r.value for r in Resource}:
        raise BadParameter("resource: patient, appointment, or empty for both")
    resource = data.resource or None
    request_id = _request(request, resource, release=False, target=resource or "both")
    return Redirect(f"/console/runs?requested={request_id}", status_code=303)


@post("/runs/{run_id:int}/release", guards=_OPERATOR, sync_to_thread=True, status_code=303)
def release_held(
    request: Request[Any, Any, Any],
    run_id: Annotated[int, PathParameter()],
    data: URLEncodedBody[SyncForm],
) -> Redirect:
    check_csrf(request, data.csrf_token)
    engine: Engine = request.app.state.engine
    latest = read_transaction(engine, functools.partial(runs.latest_runs, limit=200))
    run = next((r for r in latest if r.id == run_id), None)
    newest = next((r for r in latest if run is not None and r.resource == run.resource), None)
    if run is None or run.outcome != RunOutcome.HELD or newest is not run:
        raise BadParameter(f"run {run_id} is not the held pass of its resource (reload the page)")
    request_id = _request(request, run.resource, release=True, target=f"run {run_id}",
                          held_run_id=run_id)  # fmt: skip
    return Redirect(f"/console/runs?requested={request_id}", status_code=303)


ROUTES = [sync_now, release_held]
