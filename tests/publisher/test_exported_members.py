"""The publisher's public surface: what the command line uses."""

from __future__ import annotations

import publisher


def test_exported_members() -> None:
    assert sorted(publisher.__all__) == sorted(
        [
            "CURSOR_HEADER", "Publisher", "StreamConflict", "ensure_stream", "message_body",
            "message_id", "publication_name", "running_publisher", "subject_for"
        ]
    )  # fmt: skip
    for name in publisher.__all__:
        assert getattr(publisher, name) is not None
