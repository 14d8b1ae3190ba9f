"""A TCP link to the database server that tests can break in the two ways networks break.

``cut()`` drops every connection and refuses new ones at once (the server went away: clients
see an error immediately). ``stall()`` keeps every connection open but forwards nothing, and
accepts new connections without ever connecting them through (a partition, a hung server:
clients see nothing at all, only their own deadlines end the wait). ``restore()`` heals both;
stalled connections carry on where they stopped.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType

_OPEN, _CUT, _STALLED = "open", "cut", "stalled"


class DatabaseLink:
    """Forwards 127.0.0.1:<port> to ``target``; use as a context manager."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._state = _OPEN
        self._flowing = threading.Event()
        self._flowing.set()
        self._closing = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> DatabaseLink:
        self._acceptor.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        self.cut()
        self._flowing.set()
        self._listener.close()

    def url(self, database_url: str, host: str, port: int) -> str:
        """``database_url`` pointed at this link instead of ``host:port``."""
        return database_url.replace(f"@{host}:{port}/", f"@127.0.0.1:{self.port}/", 1)

    def cut(self) -> None:
        with self._lock:
            self._state = _CUT
            self._flowing.set()
            for end in self._sockets:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
            self._sockets.clear()

    def stall(self) -> None:
        with self._lock:
            self._state = _STALLED
            self._flowing.clear()

    def restore(self) -> None:
        with self._lock:
            self._state = _OPEN
            self._flowing.set()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._state == _CUT:
                    client.close()
                    continue
                self._sockets.append(client)
            # Connected through only once traffic flows: a stalled link answers nothing.
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._flowing.wait()
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            if self._state == _CUT or client.fileno() < 0:
                upstream.close()
                client.close()
                return
            self._sockets.append(upstream)
        self._pump(client, upstream)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self._closing:
                self._flowing.wait()
                for key, _ in selector.select(timeout=0.2):
                    if not self._flowing.is_set():
                        break  # stalled meanwhile: hold the data until restored
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            selector.close()
            for end in (client, upstream):
                with contextlib.suppress(OSError):
                    end.close()
