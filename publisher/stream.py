"""The JetStream stream the change feed is published to: its subjects, its limits, and the
check that it is ours.

One stream (``HEALTHDOCK_NATS_STREAM``) takes ``<prefix>.>``; each event goes to
``<prefix>.<resource>.<action>`` (``healthdock.events.patient.created``), or ``<prefix>.other``
for a type the mirror does not know. File storage; messages older than
``HEALTHDOCK_NATS_MAX_AGE_DAYS`` are dropped; duplicates (by ``Nats-Msg-Id``) are dropped within
``DUPLICATE_WINDOW``, far longer than a publisher's retries.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.errors import BadRequestError, NotFoundError

from config import MirrorError
from mirror import EVENT_TYPES

log = logging.getLogger(__name__)

DUPLICATE_WINDOW_SECONDS = 2 * 3600.0
OTHER = "other"


class StreamConflict(MirrorError):
    """The stream cannot be ours as configured: the message says what is in the way."""


def subjects(prefix: str) -> list[str]:
    return [f"{prefix}.>"]


def subject_for(prefix: str, event_type: str) -> str:
    """``<prefix>.<resource>.<action>`` for a known event type, ``<prefix>.other`` else."""
    # Known types are written <resource>.<action> already (patient.created): safe tokens.
    return f"{prefix}.{event_type}" if event_type in EVENT_TYPES else f"{prefix}.{OTHER}"


async def ensure_stream(
    js: JetStreamContext, name: str, prefix: str, max_age_days: float
) -> StreamInfo:
    """The stream, created when absent; one with other subjects is refused, never changed."""
    wanted = subjects(prefix)
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        config = StreamConfig(
            name=name,
            description="healthdock-mirror's change feed",
            subjects=wanted,
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_age=max_age_days * 86_400,
            # The server refuses a window longer than the stream keeps its messages.
            duplicate_window=min(DUPLICATE_WINDOW_SECONDS, max_age_days * 86_400),
        )
        try:
            info = await js.add_stream(config)
        except BadRequestError as error:
            raise StreamConflict(
                f"JetStream refused to create the stream {name} for {wanted[0]} "
                f"({error.description}): another stream takes these subjects? Set "
                "HEALTHDOCK_NATS_SUBJECT_PREFIX or HEALTHDOCK_NATS_STREAM"
            ) from None
        log.info("created the JetStream stream %s for %s", name, wanted[0])
        return info
    have = list(info.config.subjects or [])
    if sorted(have) != sorted(wanted):
        raise StreamConflict(
            f"the JetStream stream {name} exists with subjects {have}, not {wanted}: it is not "
            "this mirror's change feed (set HEALTHDOCK_NATS_STREAM to another name, or fix it)"
        )
    return info
