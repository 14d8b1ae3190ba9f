"""Serving the fake over real sockets with uvicorn, in the foreground or on a thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fake_healthdock.app import Receive, Scope, Send, create_app
from fake_healthdock.connection import current_transport
from fake_healthdock.fake import FakeHealthDock

_START_SECONDS = 10.0


class _DroppableProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, telling the app which connection each request came on, so the
    ``reset_rate`` fault can drop it (uvicorn itself would answer a failed request with 500)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        app = self.app

        async def with_transport(scope: Scope, receive: Receive, send: Send) -> None:
            current_transport.set(transport)
            await app(scope, receive, send)

        self.app = with_transport


def _config(fake: FakeHealthDock, host: str, port: int, **options: Any) -> uvicorn.Config:
    app = create_app(fake, mutations_per_second=options.pop("mutations_per_second", 0.0))
    return uvicorn.Config(
        app, host=host, port=port, http=_DroppableProtocol, lifespan="on", **options
    )


def serve(
    fake: FakeHealthDock,
    *,
    host: str = "127.0.0.1",
    port: int = 8900,
    mutations_per_second: float = 0.0,
    log_level: str = "info",
) -> None:
    """Serve ``fake`` until interrupted."""
    config = _config(
        fake, host, port, mutations_per_second=mutations_per_second, log_level=log_level
    )
    uvicorn.Server(config).run()


@contextlib.contextmanager
def serve_in_thread(fake: FakeHealthDock, *, mutations_per_second: float = 0.0) -> Iterator[str]:
    """Serve ``fake`` on a free loopback port in a background thread; yields its base URL
    (``http://127.0.0.1:<port>``) once it accepts connections, and stops it afterwards."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = _config(
        fake, "127.0.0.1", port, mutations_per_second=mutations_per_second, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + _START_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake HealthDock did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(_START_SECONDS)
        sock.close()
