"""Replay from the console: the dry run's diff first, then a confirm step (operators only).

The selection is the events page's filters (or one event's seq), turned into the command
line's ``mirror.Selection``; the dry run rolls back whatever it did and shows, for each event,
what it would become and which of its record's fields would change (names only: the values
are patient data). Confirming posts the same selection with the session's CSRF token; its audit
row (``replay``, the selection) is written before anything is replayed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Request, get, post
from litestar.params import QueryParameter, URLEncodedBody
from litestar.response import Template
from sqlalchemy import Engine

from mirror import (
    EVENT_TYPES,
    AuditAction,
    ReplayedEvent,
    Role,
    Selection,
    SelectionError,
    count_selected,
    read_transaction,
    replay,
)
from receiver.access import audited
from receiver.console.auth import check_csrf, signed_in
from receiver.console.pages import BadParameter, instant_parameter, page

_OPERATOR = [signed_in(Role.OPERATOR)]
_SHOWN = 200  # events listed on the page; the counts cover every one
# The most one console replay takes: a dry run holds SQLite's write lock while it runs, and
# webhooks wait for it. The command line's replay takes any number, in batches.
MAX_EVENTS = 1000
_Query = Annotated[str | None, QueryParameter()]


@dataclass
class ReplayForm:
    csrf_token: str = ""
    status: str = ""
    source: str = ""
    type: str = ""
    since: str = ""
    until: str = ""
    seq: str = ""


def _selection(form: ReplayForm) -> Selection:
    if form.type and form.type not in EVENT_TYPES:
        raise BadParameter("type: one of the event types HealthDock sends")
    if form.seq and (not form.seq.isdigit() or len(form.seq) > 18):
        raise BadParameter("seq: a positive whole number")
    selection = Selection(
        since=instant_parameter("since", form.since),
        until=instant_parameter("until", form.until),
        event_types=(form.type,) if form.type else (),
        statuses=(form.status,) if form.status else (),
        source=form.source or None,
        seqs=(int(form.seq),) if form.seq else (),
    )
    try:
        selection.validate()
    except SelectionError as error:
        raise BadParameter(str(error).replace("--", "")) from None
    return selection


def _describe(form: ReplayForm) -> str:
    named = (("seq", form.seq), ("status", form.status), ("source", form.source),
             ("type", form.type), ("since", form.since), ("until", form.until))  # fmt: skip
    return ", ".join(f"{name} {value}" for name, value in named if value)


def _counted(engine: Engine, selection: Selection) -> int:
    count = read_transaction(engine, functools.partial(count_selected, selection=selection))
    if count > MAX_EVENTS:
        raise BadParameter(
            f"{count} events match: the console replays at most {MAX_EVENTS} at a time (narrow "
            "the selection, or use `healthdock-mirror replay`)"
        )
    return count


def _run(engine: Engine, selection: Selection, *, dry_run: bool) -> tuple[Any, list[ReplayedEvent]]:
    shown: list[ReplayedEvent] = []

    def hear(event: ReplayedEvent) -> None:
        if len(shown) < _SHOWN:
            shown.append(event)

    summary = replay(engine, selection, dry_run=dry_run, on_event=hear)
    return summary, shown


@get("/replay", guards=_OPERATOR, sync_to_thread=True)
def replay_preview(
    request: Request[Any, Any, Any],
    status: _Query = None,
    source: _Query = None,
    type: _Query = None,
    since: _Query = None,
    until: _Query = None,
    seq: _Query = None,
) -> Template:
    form = ReplayForm("", status or "", source or "", type or "", since or "", until or "",
                      seq or "")  # fmt: skip
    engine: Engine = request.app.state.engine
    selection = _selection(form)
    _counted(engine, selection)
    summary, shown = _run(engine, selection, dry_run=True)
    return page(request, "replay.html", "Events", form=form, summary=summary, events=shown,
                described=_describe(form), done=False)  # fmt: skip


@post("/replay", guards=_OPERATOR, sync_to_thread=True, status_code=200)
def replay_confirmed(request: Request[Any, Any, Any], data: URLEncodedBody[ReplayForm]) -> Template:
    check_csrf(request, data.csrf_token)
    selection = _selection(data)
    engine: Engine = request.app.state.engine
    count = _counted(engine, selection)
    # The row first: an operator's replay is on the trail even if it fails half way.
    audited(request, AuditAction.REPLAY, f"{_describe(data)} ({count} events)")
    summary, shown = _run(engine, selection, dry_run=False)
    return page(request, "replay.html", "Events", form=data, summary=summary, events=shown,
                described=_describe(data), done=True)  # fmt: skip


ROUTES = [replay_preview, replay_confirmed]
