"""sync/network.py: the reconciler's transport on real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from fake_healthdock import FakeHealthDock, serve_in_thread
from sync.network import http_transport

API_KEY = "network-api-key"


def test_a_pass_worth_of_requests_does_not_ask_each_socket_its_peer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx's own pool called getpeername for every connection at every request; ours finds
    each socket once. 200 requests on 8 connections stay far below one call a request."""
    calls = 0
    real: Callable[[socket.socket], Any] = socket.socket.getpeername

    def counted(self: socket.socket) -> Any:
        nonlocal calls
        calls += 1
        return real(self)

    fake = FakeHealthDock(seed=3, patients=50, api_key=API_KEY, rate_limit=None)
    with serve_in_thread(fake) as base_url:
        monkeypatch.setattr(socket.socket, "getpeername", counted)

        async def fetch_all() -> list[int]:
            transport = http_transport()
            assert transport is not None
            headers = {"Authorization": f"Bearer {API_KEY}"}
            async with httpx.AsyncClient(base_url=base_url + "/v1", transport=transport,
                                         headers=headers) as client:  # fmt: skip
                gate = asyncio.Semaphore(8)

                async def one(page: int) -> int:
                    async with gate:
                        response = await client.get("/patients", params={"page": page % 5 + 1})
                        return response.status_code

                return await asyncio.gather(*(one(n) for n in range(200)))

        statuses = asyncio.run(fetch_all())
    assert statuses == [200] * 200
    assert calls < 50


@asynccontextmanager
async def closing_server() -> AsyncIterator[tuple[str, list[int]]]:
    """Answers one request per connection, announces keep-alive, then closes it: a server
    that dropped an idle connection. Yields its URL and the requests each connection got."""
    served: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(0)
        await reader.readuntil(b"\r\n\r\n")
        served[-1] += 1
        body = b'{"ok": true}'
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", served


def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def twice() -> tuple[list[int], list[int]]:
        async with closing_server() as (url, served):
            transport = http_transport()
            assert transport is not None
            async with httpx.AsyncClient(transport=transport) as client:
                statuses = []
                for _ in range(2):
                    statuses.append((await client.get(url)).status_code)
                    await asyncio.sleep(0.05)  # the server's close reaches us
            return statuses, served

    statuses, served = asyncio.run(twice())
    assert statuses == [200, 200]
    assert served == [1, 1]  # the second request went on a new connection


def test_a_proxy_in_the_environment_keeps_httpxs_own_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.hospital.example:3128")
    assert http_transport() is None
