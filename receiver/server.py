"""How the receiver is served: uvicorn's httptools protocol with the limits a server facing a
network needs and uvicorn does not set.

- A request's head (request line and headers) is refused with 431 once it passes
  ``HEALTHDOCK_MAX_HEADER_BYTES``. The bytes are counted before the parser sees them: httptools
  accumulates a header's pieces by copying, so a huge head costs quadratic time if it gets in.
- A head must be complete within ``HEALTHDOCK_HEADER_TIMEOUT_SECONDS`` of the connection's
  opening (or of the request's first byte, on a kept-alive connection): else 408. A body must
  be complete within ``HEALTHDOCK_BODY_TIMEOUT_SECONDS`` of the end of its head: else 408, or
  a plain close if an answer was already sent. A slow client holds a socket and a buffer
  for that long at most.
- Above ``HEALTHDOCK_MAX_CONNECTIONS`` open connections, a new one is answered 503 with
  ``Retry-After`` at once and closed: what an attacker can hold is bounded, and an honest
  sender is told to come back instead of waiting.

Every refusal is in the vendor's error envelope with ``Connection: close``. The receiver serves
no WebSocket: an ``Upgrade`` request is plain HTTP, so no WebSocket library logs its headers.
The hot path gains a few attribute writes per request: deadlines are timestamps, checked by one
timer per connection that fires only when a deadline may have passed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from litestar import Litestar
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from config import Settings

log = logging.getLogger(__name__)

# After a refusal the client may still be sending: what it sends is read and dropped for this
# long, so that it can read the answer (a close with unread data resets the connection, and
# the answer may be lost with it), then the connection is closed whatever the client does.
# At most HEALTHDOCK_MAX_CONNECTIONS refused connections linger at once: so the sockets held
# stay under twice the ceiling, plus the listen backlog.
LINGER_SECONDS = 1.0
# The connection-ceiling warning, at most this often: a flood must not flood the logs too.
_WARN_EVERY_SECONDS = 60.0
_NEVER = math.inf


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may hold of the receiver."""

    max_header_bytes: int
    header_timeout_seconds: float
    body_timeout_seconds: float
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout_seconds=settings.header_timeout_seconds,
            body_timeout_seconds=settings.body_timeout_seconds,
            max_connections=settings.max_connections,
        )


@dataclass
class _Refusals:
    """What the connections of one server share about refusing."""

    lingering: int = 0  # refused connections not yet closed
    warned_at: float = -_NEVER  # when the connection ceiling was last reported


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, holding each connection to :class:`Limits`."""

    limits: ClassVar[Limits]
    refusals: ClassVar[_Refusals]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._head_bytes = 0  # of the head being received
        self._in_head = True  # the next bytes are (part of) a head
        self._deadline = _NEVER  # for the head or the body being received
        self._watchdog: asyncio.TimerHandle | None = None
        self._refused = False
        self._lingering = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport
            self._warn_busy()
            self._refuse(
                503,
                "SERVICE_UNAVAILABLE",
                "the receiver is at its connection limit; retry later",
                b"retry-after: 5\r\n",
            )
            return
        super().connection_made(transport)
        self._deadline = self.loop.time() + self.limits.header_timeout_seconds
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._lingering:
            self._lingering = False
            self.refusals.lingering -= 1
        super().connection_lost(exc)

    # The hot path: one override per chunk received and one per request (the parser's
    # message-complete callback); the base class's methods are called by name, cheaper than
    # super(). A head's end is seen from the parser's new request cycle.

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: read and dropped
        if not self._in_head:
            HttpToolsProtocol.data_received(self, data)
            return
        if self._deadline == _NEVER:  # the first bytes of a request after the previous one
            self._deadline = self.loop.time() + self.limits.header_timeout_seconds
            if self._watchdog is None or self._watchdog.when() > self._deadline:
                self._watch()
        room = self.limits.max_header_bytes - self._head_bytes
        if len(data) > room:
            self._receive_past_the_limit(data, room)
            return
        self._head_bytes += len(data)
        cycle = self.cycle
        HttpToolsProtocol.data_received(self, data)
        if self.cycle is not cycle:
            self._head_received()

    def _head_received(self) -> None:
        """A head is complete (the parser started a new request cycle)."""
        if self.cycle.more_body:  # its body is still to come
            self._in_head = False
            self._deadline = self.loop.time() + self.limits.body_timeout_seconds

    def _receive_past_the_limit(self, data: bytes, room: int) -> None:
        """Parse what fits under the limit; if the head ends there, the rest is its body (or
        the next request) and is received as usual, and if not, the head is too large."""
        cycle = self.cycle
        HttpToolsProtocol.data_received(self, data[:room])
        if self.transport.is_closing() or self._refused:
            return  # the parser refused the request itself (400)
        if self.cycle is cycle:
            self._refuse(
                431,
                "REQUEST_HEADER_FIELDS_TOO_LARGE",
                f"the request line and headers are over {self.limits.max_header_bytes} bytes",
            )
            return
        self._head_received()
        self.data_received(data[room:])

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        # Until the next request's first byte: the app has this one, the keep-alive timeout
        # covers the wait for the next.
        self._deadline = _NEVER
        HttpToolsProtocol.on_message_complete(self)

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn would warn of a missing WebSocket library at every such request. httptools
        # parses nothing after an Upgrade head: answer this request, then close.
        log.debug("an Upgrade request is answered as plain HTTP: the receiver has no WebSocket")
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        else:
            self.transport.close()

    # Deadlines and refusals.

    def _watch(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = self.loop.call_at(self._deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._watchdog = None
        if self._refused or self.transport.is_closing() or self._deadline == _NEVER:
            return  # the next request's first byte arms it again
        if self.loop.time() < self._deadline:
            self._watch()  # the deadline moved on meanwhile
        elif self._in_head:
            self._refuse(
                408,
                "REQUEST_TIMEOUT",
                "the request line and headers did not arrive within "
                f"{self.limits.header_timeout_seconds:g} s",
            )
        elif self.cycle is None or not self.cycle.response_started:
            self._refuse(
                408,
                "REQUEST_TIMEOUT",
                f"the request body did not arrive within {self.limits.body_timeout_seconds:g} s",
            )
        else:
            self.transport.close()  # answered already (413, say) while the body still came

    def _refuse(self, status: int, code: str, message: str, *headers: bytes) -> None:
        """Answer ``status`` in the error envelope, stop serving, close after lingering."""
        log.debug("refusing a connection with %d: %s", status, message)
        self._refused = True
        self._deadline = _NEVER
        # No longer served: it counts against the connection ceiling no more.
        self.connections.discard(self)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app waiting on this request's body gets a disconnect; its answer is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        body = json.dumps(
            {"success": False, "error": {"code": code, "message": message, "details": {}}}
        ).encode()
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
            *headers,
            b"\r\n",
            body,
        ]
        transport = self.transport
        transport.write(b"".join(content))
        if self.refusals.lingering >= self.limits.max_connections or not transport.can_write_eof():
            # A flood: no more sockets held than the ceiling again, at the risk of this
            # answer being lost to a reset.
            transport.close()
            return
        transport.write_eof()
        if self.flow is not None:
            self.flow.resume_reading()
        self._lingering = True
        self.refusals.lingering += 1
        self.loop.call_later(LINGER_SECONDS, transport.close)

    def _warn_busy(self) -> None:
        now = self.loop.time()
        if now - self.refusals.warned_at >= _WARN_EVERY_SECONDS:
            self.refusals.warned_at = now
            log.warning(
                "%d connections open (HEALTHDOCK_MAX_CONNECTIONS): new ones are refused with "
                "503 (said at most once a minute)",
                self.limits.max_connections,
            )


def protocol_for(limits: Limits) -> type[LimitedProtocol]:
    """The protocol class uvicorn instantiates for each connection, holding it to ``limits``."""
    return type("ReceiverProtocol", (LimitedProtocol,), {"limits": limits, "refusals": _Refusals()})


def serve(app: Litestar, settings: Settings, *, access_log: bool = False) -> None:
    """Serve ``app`` on ``settings.host``/``settings.port`` until interrupted."""
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_for(Limits.of(settings)),
        # No WebSocket endpoint: an Upgrade request stays plain HTTP (uvicorn's WebSocket
        # implementations log every header of such a request at DEBUG, the token included).
        ws="none",
        log_level=settings.log_level.lower(),
        access_log=access_log,
        # The client address (the audit trail's, the sign-in throttle's) is X-Forwarded-For's
        # only when the connection comes from one of these: the hospital's TLS proxy.
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        # uvicorn would otherwise replace the logging the entry point set up.
        log_config=None,
    )
