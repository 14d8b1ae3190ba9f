"""``GET /events``: the change feed over the event log, for internal consumers (a feed token).

Every page is audited (``feed.read``, its seq range) before it is sent: it carries patient data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Request, get
from litestar.params import Parameter, QueryParameter
from sqlalchemy import Engine

from mirror import DEFAULT_LIMIT, MAX_LIMIT, AuditAction, FeedPage, Role, read_feed
from receiver.access import TOKEN_SECURITY, audited, require_role
from receiver.errors import error_responses


@dataclass(frozen=True, slots=True)
class FeedEnvelope:
    success: bool
    data: FeedPage


@get(
    "/events",
    summary="The change feed: every stored event once, in a stable order",
    description=(
        "Events of the event log (webhooks and changes a reconcile found, `source` says which) "
        "after `after`, oldest first. Pass the answer's `next_cursor` as `after` next time; it "
        "is opaque, and unchanged when nothing new arrived. `has_more`: more can be read right "
        "away. `payload` is the event's body as received (null once retention pruned it, or if it "
        "is nested more than 64 levels deep). "
        "Requires a token with the `feed` role (or `$HEALTHDOCK_ADMIN_TOKEN`); every page read "
        "is written to the audit trail first."
    ),
    tags=["feed"],
    guards=[require_role(Role.FEED)],
    security=TOKEN_SECURITY,
    responses=error_responses(400, 401, 403, 503),
    sync_to_thread=True,
)
def read_events(
    request: Request[Any, Any, Any],
    after: str | None = Parameter(
        default=None, description="a next_cursor from an earlier answer; absent or 0: the start"
    ),
    limit: int = Parameter(
        default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="most events in the answer"
    ),
    event_type: Annotated[
        str | None,
        QueryParameter(
            name="type",
            description="only these event types (comma-separated), e.g. patient.created",
        ),
    ] = None,
) -> FeedEnvelope:
    engine: Engine = request.app.state.engine
    types = {part.strip() for part in (event_type or "").split(",") if part.strip()}
    # A bad cursor raises FeedError: receiver.errors answers it 400.
    page = read_feed(engine, after, limit=limit, event_types=types)
    seqs = [event.seq for event in page.events]
    target = f"seq {min(seqs)}-{max(seqs)} ({len(seqs)} events)" if seqs else "no events"
    audited(request, AuditAction.FEED_READ, target)
    return FeedEnvelope(True, page)
