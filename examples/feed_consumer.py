"""A change-feed consumer: follows ``GET /events``, keeps its place in a file, and after any
downtime catches up from where it stopped, so it never misses an event.

    HEALTHDOCK_FEED_URL=http://127.0.0.1:8080 HEALTHDOCK_ADMIN_TOKEN=... \\
        python examples/feed_consumer.py feed-cursor.txt

Delivery is at least once: the cursor is saved after a page is handled, so a crash in between
hands that page over again. Make ``handle`` idempotent (for example, keyed on ``seq``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

Event = dict[str, Any]


def load_cursor(path: Path) -> str:
    """The saved cursor, or ``0`` (the beginning of the feed) on the first run."""
    return path.read_text().strip() if path.exists() else "0"


def save_cursor(path: Path, cursor: str) -> None:
    # Write then rename: a crash leaves the old cursor or the new one, never half of one.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(cursor)
    partial.replace(path)


def catch_up(
    client: httpx.Client, cursor_file: Path, handle: Callable[[Event], None], limit: int = 100
) -> int:
    """Handle every event the feed has now, page by page; return how many."""
    cursor = load_cursor(cursor_file)
    handled = 0
    while True:
        response = client.get("/events", params={"after": cursor, "limit": limit})
        response.raise_for_status()
        page = response.json()["data"]
        for event in page["events"]:
            handle(event)
        handled += len(page["events"])
        # The cursor is opaque: store it as it came, never build or compare one.
        cursor = page["next_cursor"]
        save_cursor(cursor_file, cursor)
        if not page["has_more"]:
            return handled


def print_event(event: Event) -> None:
    # Only identifiers: the payload carries patient data, which has no place in a log.
    print(event["seq"], event["source"], event["event_type"], event["record_id"], flush=True)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: feed_consumer.py CURSOR_FILE")
    cursor_file = Path(sys.argv[1])
    url = os.environ.get("HEALTHDOCK_FEED_URL", "http://127.0.0.1:8080")
    token = os.environ["HEALTHDOCK_ADMIN_TOKEN"]
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        while True:
            try:
                catch_up(client, cursor_file, print_event)
            except httpx.TransportError as error:
                print(f"feed unreachable ({type(error).__name__}); retrying", file=sys.stderr)
            except httpx.HTTPStatusError as error:
                # 503: the database is away for a moment. Anything else (a refused token, an
                # unknown cursor) needs a person.
                if error.response.status_code != 503:
                    sys.exit(f"feed refused: {error.response.text}")
                print("feed unavailable; retrying", file=sys.stderr)
            time.sleep(2)


if __name__ == "__main__":
    main()
