"""The console's pages: what an operator and a compliance officer look at and do.

Every page reads through the mirror core in one read transaction; a page that shows patient
data (a record, a payload) writes its audit row first (``receiver.access.audited``). Filters
and pages come from the query string and are validated: a bad value is a 400 page naming the
parameter, never a 5xx, never the value echoed in a log.
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from litestar import Request, Response, get, post
from litestar.params import PathParameter, QueryParameter, URLEncodedBody
from litestar.response import Redirect, Template
from sqlalchemy import Engine

from mirror import (
    EVENT_TYPES,
    AuditAction,
    EventFilter,
    EventSource,
    EventStatus,
    Resource,
    Role,
    RunOutcome,
    audit,
    event_body,
    event_detail,
    events_per_hour,
    gather_status,
    list_events,
    read_transaction,
    record_row,
    record_timeline,
    runs,
    sessions,
    sync_requests,
    unlisted_records,
    write_transaction,
)
from receiver.access import audited
from receiver.console.auth import (
    LoginThrottle,
    check_csrf,
    login_cookie,
    login_csrf_ok,
    safe_next,
    session_cookie,
    sign_in,
    signed_in,
)
from receiver.console.charts import Chart, stacked_bars

_PAGE = 50
# Query and path parameters, declared as Litestar wants them (no inferred style).
_Query = Annotated[str | None, QueryParameter()]
_Seq = Annotated[int, PathParameter()]
_Text = Annotated[str, PathParameter()]
_MAX_SEQ = 2**63  # a BIGINT: a larger number names no event (and would overflow the driver)
_VIEWER = [signed_in(Role.VIEWER)]


class BadParameter(ValueError):
    """A query parameter the console cannot use; the message names it."""


def _engine(request: Request[Any, Any, Any]) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def page(request: Request[Any, Any, Any], name: str, section: str, **context: Any) -> Template:
    """A console page: the template with who is signed in, their CSRF token and what they
    may do."""
    session: sessions.Session | None = getattr(request.state, "session", None)
    return Template(
        template_name=name,
        context={
            "principal": None if session is None else session.principal,
            "csrf_token": None if session is None else session.csrf_token,
            # Actions are shown only to who may take them (the server refuses them anyway).
            "can_act": session is not None and session.principal.may(Role.OPERATOR),
            "section": section,
            **context,
        },
    )


# --- sign-in ----------------------------------------------------------------------------------


@get("/login", sync_to_thread=False)
def login_page(request: Request[Any, Any, Any], next: _Query = None) -> Template:
    value, cookie = login_cookie(request)
    template = page(request, "login.html", "", login_csrf=value, next=safe_next(next), error=None)
    template.cookies = [cookie]
    return template


@dataclass
class LoginForm:
    token: str = ""
    csrf_token: str = ""
    next: str = ""


@post("/login", status_code=303)
async def login(
    request: Request[Any, Any, Any],
    data: URLEncodedBody[LoginForm],
) -> Response[Any]:
    throttle: LoginThrottle = request.app.state.login_throttle
    if not login_csrf_ok(request, data.csrf_token):
        value, cookie = login_cookie(request)
        answer = page(request, "login.html", "", login_csrf=value, next=safe_next(data.next),
                     error="The sign-in form expired: please try again.")  # fmt: skip
        answer.cookies = [cookie]
        answer.status_code = 403
        return answer
    outcome = await sign_in(request, data.token[:512], throttle)
    previous = request.cookies.get("hdm_session")
    if previous and not isinstance(outcome, str):
        # A new sign-in ends the session this browser had (a shared workstation's).
        end = functools.partial(sessions.end_session, session_id=previous)
        await asyncio.to_thread(write_transaction, _engine(request), end)
    if isinstance(outcome, str):
        value, cookie = login_cookie(request)
        answer = page(request, "login.html", "", login_csrf=value, next=safe_next(data.next),
                     error=outcome)  # fmt: skip
        answer.cookies = [cookie]
        answer.status_code = 401
        return answer
    session_id, _ = outcome
    response = Redirect(safe_next(data.next), status_code=303)
    response.cookies = [session_cookie(request, session_id)]
    return response


@dataclass
class CsrfForm:
    csrf_token: str = ""


@post("/logout", guards=_VIEWER, status_code=303, sync_to_thread=True)
def logout(
    request: Request[Any, Any, Any],
    data: URLEncodedBody[CsrfForm],
) -> Response[Any]:
    check_csrf(request, data.csrf_token)
    session_id = request.cookies.get("hdm_session", "")
    write_transaction(_engine(request), lambda c: sessions.end_session(c, session_id))
    audited(request, AuditAction.CONSOLE_LOGOUT, None)
    response = Redirect("/console/login", status_code=303)
    response.cookies = [session_cookie(request, "", expire=True)]
    return response


# --- overview ---------------------------------------------------------------------------------

_SOURCES = [str(source) for source in EventSource]


@get("/", guards=_VIEWER, sync_to_thread=True)
def overview(request: Request[Any, Any, Any]) -> Template:
    engine = _engine(request)
    status = gather_status(engine, runs=10)
    now = status.generated_at
    hour = now.replace(minute=0, second=0, microsecond=0)
    hours = [hour - timedelta(hours=23 - i) for i in range(24)]
    days = [(now - timedelta(days=13 - i)).date() for i in range(14)]
    hourly, daily = read_transaction(engine, lambda c: (
        events_per_hour(c, hours[0]),
        runs.loss_per_day(c, datetime.combine(days[0], datetime.min.time(), UTC)),
    ))  # fmt: skip
    by_hour: dict[datetime, dict[str, int]] = {h: {} for h in hours}
    for moment, source, count in hourly:
        if moment in by_hour:
            by_hour[moment][source] = by_hour[moment].get(source, 0) + count
    hourly_chart = stacked_bars([(f"{h:%H}h", by_hour[h]) for h in hours], _SOURCES, label_every=3)
    loss = dict(daily)
    loss_chart: Chart = stacked_bars(
        [(f"{d:%d %b}", {"loss": loss.get(d, 0)}) for d in days], ["loss"], label_every=2
    )
    return page(request, "overview.html", "Overview", status=status, hourly=hourly_chart,
                 daily_loss=loss_chart)  # fmt: skip


# --- events -----------------------------------------------------------------------------------


def instant_parameter(name: str, value: str | None) -> datetime | None:
    """A form's or query's date and time (the browser's picker: no zone, so UTC)."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadParameter(f"{name}: not a date and time (use the picker, or ISO 8601)") from None
    # SQLite keeps naive UTC: an instant with another offset must be converted, not kept.
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _positive(name: str, value: str | None) -> int | None:
    if not value:
        return None
    if not value.isdigit() or len(value) > 18:  # 18 digits stay below 2**63
        raise BadParameter(f"{name}: a positive whole number")
    return int(value)


@get("/events", guards=_VIEWER, sync_to_thread=True)
def events(
    request: Request[Any, Any, Any],
    status: _Query = None,
    source: _Query = None,
    type: _Query = None,
    since: _Query = None,
    until: _Query = None,
    before: _Query = None,
) -> Template:
    if status and status not in set(map(str, EventStatus)):
        raise BadParameter("status: one of " + ", ".join(map(str, EventStatus)))
    if source and source not in _SOURCES:
        raise BadParameter("source: one of " + ", ".join(_SOURCES))
    if type and type not in EVENT_TYPES:
        raise BadParameter("type: one of the event types HealthDock sends")
    filters = EventFilter(
        status=status or None, source=source or None, event_type=type or None,
        since=instant_parameter("since", since), until=instant_parameter("until", until),
        before=_positive("before", before),
    )  # fmt: skip
    found = read_transaction(_engine(request), lambda c: list_events(c, filters, _PAGE + 1))
    more = len(found) > _PAGE
    shown = found[:_PAGE]
    query = {k: v for k, v in {"status": status, "source": source, "type": type,
                               "since": since, "until": until}.items() if v}  # fmt: skip
    next_before = shown[-1].seq if more and shown else None
    return page(
        request, "events.html", "Events", events=shown,
        statuses=[str(s) for s in EventStatus], sources=_SOURCES,
        event_types=sorted(EVENT_TYPES),
        filters={**filters.as_form(), "since_text": since or "", "until_text": until or "",
                 "any": bool(query)},
        next_before=next_before,
        next_href="/console/events?" + urlencode({**query, "before": next_before or ""}),
        first_href="/console/events?" + urlencode(query),
        replay_query=urlencode(query),
    )  # fmt: skip


@get("/events/{seq:int}", guards=_VIEWER, sync_to_thread=True)
def event_page(request: Request[Any, Any, Any], seq: _Seq) -> Template:
    if not 0 < seq < _MAX_SEQ:
        return _not_found(request, f"There is no event {seq}.")
    detail = read_transaction(_engine(request), lambda c: event_detail(c, seq))
    if detail is None:
        return _not_found(request, f"There is no event {seq}.")
    return page(request, "event.html", "Events", event=detail)


@get("/events/{seq:int}/payload", guards=_VIEWER, sync_to_thread=True)
def event_payload(request: Request[Any, Any, Any], seq: _Seq) -> Template:
    if not 0 < seq < _MAX_SEQ:
        return _not_found(request, f"There is no event {seq}.")
    body = read_transaction(_engine(request), lambda c: event_body(c, seq))
    if body is None:
        return _not_found(request, f"Event {seq} has no payload (none, or removed by retention).")
    audited(request, AuditAction.PAYLOAD_SHOW, f"event {seq}")
    try:
        shown = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        shown = body.decode("utf-8", errors="replace")
    partial = request.headers.get("hx-request") == "true"
    return page(request, "payload.html", "Events", seq=seq, payload=shown, partial=partial)


# --- records ----------------------------------------------------------------------------------


@get("/records/{resource:str}/{record_id:path}", guards=_VIEWER, sync_to_thread=True)
def record_page(request: Request[Any, Any, Any], resource: _Text, record_id: _Text) -> Template:
    try:
        kind = Resource(resource)
    except ValueError:
        raise BadParameter("resource: patient or appointment") from None
    record_id = record_id.removeprefix("/")  # a path parameter keeps its leading slash
    if not record_id or len(record_id) > 128:
        raise BadParameter("record id: 1 to 128 characters")
    row, timeline = read_transaction(_engine(request), lambda c: (
        record_row(c, kind, record_id), record_timeline(c, kind, record_id, 200),
    ))  # fmt: skip
    audited(request, AuditAction.RECORD_VIEW, f"{kind.value} {record_id}")
    return page(request, "record.html", "Events", resource=kind.value, record_id=record_id,
                 row=row, timeline=timeline)  # fmt: skip


# --- sync runs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeldRun:
    run: runs.RunSummary
    candidates: list[str]


def _held_candidates(connection: Any, run: runs.RunSummary) -> list[str]:
    """The first ids the held pass did not list: what its release would confirm."""
    found = unlisted_records(connection, Resource(run.resource), run.id, run.started_at, None,
                             "", 50)  # fmt: skip
    return [candidate.id for candidate in found]


@get("/runs", guards=_VIEWER, sync_to_thread=True)
def runs_page(request: Request[Any, Any, Any], requested: _Query = None) -> Template:
    engine = _engine(request)
    asked = read_transaction(engine, sync_requests.recent_requests)
    status = gather_status(engine, runs=50)
    latest_held: dict[str, runs.RunSummary] = {}
    for run in status.runs:  # the latest first: a resource's latest pass decides
        latest_held.setdefault(run.resource, run)
    held = []
    for run in latest_held.values():
        if run.outcome != RunOutcome.HELD:
            continue
        ids = read_transaction(engine, functools.partial(_held_candidates, run=run))
        held.append(HeldRun(run, ids))
    flash = None
    if requested and requested.isdigit():
        flash = (f"Reconcile requested (#{requested}): the scheduler (serve with an API key, or "
                 "a worker) takes it within seconds.")  # fmt: skip
    return page(request, "runs.html", "Sync runs", status=status, held_runs=held,
                requests=asked, flash=flash)  # fmt: skip


# --- audit ------------------------------------------------------------------------------------


@get("/audit", guards=_VIEWER, sync_to_thread=True)
def audit_page(
    request: Request[Any, Any, Any],
    actor: _Query = None,
    action: _Query = None,
    before: _Query = None,
) -> Template:
    if action and action not in set(map(str, AuditAction)):
        raise BadParameter("action: one of " + ", ".join(map(str, AuditAction)))
    if actor and len(actor) > 64:
        raise BadParameter("actor: at most 64 characters")
    before_id = _positive("before", before)
    rows = read_transaction(_engine(request), lambda c: audit.read_audit(
        c, actor=actor or None, actions=[action] if action else [], before_id=before_id,
        limit=_PAGE + 1,
    ))  # fmt: skip
    more = len(rows) > _PAGE
    rows = rows[:_PAGE]
    query = {k: v for k, v in {"actor": actor, "action": action}.items() if v}
    next_href = None
    if more and rows:
        next_href = "/console/audit?" + urlencode({**query, "before": rows[-1].id})
    return page(request, "audit.html", "Audit", rows=rows, actions=[str(a) for a in AuditAction],
                 filters={"actor": actor, "action": action}, next_href=next_href)  # fmt: skip


def _not_found(request: Request[Any, Any, Any], message: str) -> Template:
    answer = page(request, "error.html", "", heading="Not found", message=message)
    answer.status_code = 404
    return answer


ROUTES = [login_page, login, logout, overview, events, event_page, event_payload, record_page,
          runs_page, audit_page]  # fmt: skip
