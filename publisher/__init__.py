"""The change feed on NATS JetStream: a publisher of every feed event, once, in feed order.

What is named here is its public surface (pinned by tests/publisher/test_exported_members.py):
what the command line uses. Dependencies: config and mirror only.
"""

from publisher.publish import (
    CURSOR_HEADER,
    Publisher,
    message_body,
    message_id,
    publication_name,
    running_publisher,
)
from publisher.stream import StreamConflict, ensure_stream, subject_for

__all__ = [
    "CURSOR_HEADER",
    "Publisher",
    "StreamConflict",
    "ensure_stream",
    "message_body",
    "message_id",
    "publication_name",
    "running_publisher",
    "subject_for",
]
