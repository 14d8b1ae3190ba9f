"""Waiting on a condition with a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], what: str, seconds: float = 60.0) -> T:
    """``probe()`` once it is not None, polled until ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while (found := probe()) is None:
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return found


def wait_until_ready(url: str, seconds: float = 30.0) -> None:
    """Poll ``url`` (a readiness endpoint) until it answers 200, or fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not become ready in {seconds:.0f} s"
        time.sleep(0.05)
