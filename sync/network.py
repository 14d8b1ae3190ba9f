"""The reconciler's HTTP transport: httpx's own, with one cost of its connection pool removed.

Before it assigns or releases a request, httpcore's pool asks each of its connections whether
it has expired, and an idle one whether the server closed it: a ``poll`` of its socket. The
AnyIO stream finds that socket by building the dictionary of all its typed attributes, and
that calls ``getpeername``; with the 16 connections of a pass, for every request. Profiled
(py-spy) on a 20,000-patient pass with 50-150 ms a page, it was a fifth of the time of a page
fetch, on the event loop that also parses every page. Here each stream's socket is looked up
once, when it connects, and the same ``poll`` answers. Everything else (TLS, timeouts, the
pool's limits, httpx's error mapping) is httpx's and httpcore's own.

An environment that names a proxy (``HTTPS_PROXY`` and the like) keeps httpx's default
transport, which honours it.
"""

from __future__ import annotations

import select
import socket
import ssl
import urllib.request
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

# httpx's own defaults, as its transport would use them: a pass holds at most its concurrency.
_LIMITS = httpx.Limits()


def http_transport() -> httpx.AsyncBaseTransport | None:
    """The transport for HealthDock's API; None (httpx's default) where a proxy is set."""
    if urllib.request.getproxies():
        return None
    transport = httpx.AsyncHTTPTransport()
    pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=_LIMITS.max_connections,
        max_keepalive_connections=_LIMITS.max_keepalive_connections,
        keepalive_expiry=_LIMITS.keepalive_expiry,
        network_backend=_SocketOnceBackend(httpcore.AnyIOBackend()),
    )
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        # Another httpx keeps its pool elsewhere: its own transport is used as it is
        # (tests/sync/test_network.py fails on that version, so it does not go unnoticed).
        return transport
    transport._pool = pool  # the pool httpx would build, on the backend below
    return transport


class _SocketOnceStream(httpcore.AsyncNetworkStream):
    """An httpcore stream whose socket, for the pool's closed-by-the-server check, is found
    once."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: socket.socket | None = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _SocketOnceStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._socket is not None:
            # What httpcore asks of an idle connection: readable means the server closed it
            # (or sent what it should not have); either way the connection is not reused.
            poller = select.poll()
            poller.register(self._socket, select.POLLIN)
            return bool(poller.poll(0))
        return self._inner.get_extra_info(info)


class _SocketOnceBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _SocketOnceStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_unix_socket(path, timeout, socket_options)
        return _SocketOnceStream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
