"""How a process of the service runs once its modules are loaded: its garbage collector.

CPython's cyclic collector scans, now and then, every container object it tracks. A process of
ours has loaded SQLAlchemy, pydantic, aiohttp and the mirror core, hundreds of thousands of
objects that live as long as it does, and each full collection scanned them all again: in the
receiver under load, each was a pause of about 60 ms of the event loop that every request in
flight waited behind, and its p99 with it; in a 200k-patient reconcile pass that changed
nothing, the collector's own thread CPU was 0.5 CPU-s (both measured with ``gc.callbacks``; the
README has the figures side by side). Frozen after start-up, those objects are left out of
every later collection. The first generation is also collected every 10,000 allocations
rather than 700: a pass allocates and frees a page's records by the thousand, and nearly all
of them are freed by their reference counts, not by the collector.

Cyclic garbage made later is still collected, in larger rounds. An object alive at start-up
that later becomes cyclic garbage is not: start-up's objects are the modules and their state,
which live as long as the process.
"""

from __future__ import annotations

import gc

# gc.set_threshold's generations: the first as said above, the older two at CPython's default.
_THRESHOLDS = (10_000, 10, 10)


def settle_after_startup() -> None:
    """Call once a process has imported what it runs on, before its work begins."""
    gc.freeze()
    gc.set_threshold(*_THRESHOLDS)
