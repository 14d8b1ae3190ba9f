"""Dropping a request's connection without a response (the ``reset_rate`` fault)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from contextvars import ContextVar

import httpx

current_transport: ContextVar[asyncio.Transport | None] = ContextVar(
    "fake_healthdock_transport", default=None
)
"""Set by :mod:`fake_healthdock.server`'s protocol for each request it serves."""


class ConnectionDropped(httpx.RemoteProtocolError):
    """The fault, in process: with no socket to drop (``httpx.ASGITransport``), the app raises
    this instead, and the client sees the error type httpx raises when a server disconnects
    without a response."""


async def drop_connection() -> None:
    transport = current_transport.get()
    if transport is None:
        raise ConnectionDropped("Server disconnected without sending a response.")
    sock = transport.get_extra_info("socket")
    if sock is not None and not transport.is_closing():
        # Linger 0: the close sends a TCP reset, as a crashed proxy or server would. (A client
        # that gave up first, say on a latency spike, has closed it already: nothing to reset.)
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    # Let the server see the connection is lost before the app returns, or it would try to
    # answer with a 500 (into a closed socket) and log an error.
    for _ in range(2):
        await asyncio.sleep(0)
