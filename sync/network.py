"""The reconciler's HTTP transport: httpx's interface, aiohttp's connections and parser.

A pass's CPU goes to HTTP more than to anything else but the ordering guard. httpx's own
transport (httpcore, its HTTP/1.1 state machine h11, and AnyIO under it) is written in Python
and costs 0.88 ms of CPU a 100-record page on this project's 2-core VM; aiohttp parses HTTP
in C (llhttp) and keeps its own pool: 0.53 ms a page through this transport, 0.26 ms alone
(``bench/sync/lean_pass.py``, and the figures in the README). The client keeps httpx's
transport interface, so its requests, its retries and the tests' in-process transports stay
as they were; only the connections change.

aiohttp does not send a request again by itself (it would resend a GET whose kept-alive
connection had closed: a request the pacer never granted). The body is read whole (a page is
tens of kilobytes), undecoded: httpx decodes it as the ``Content-Encoding`` says, as with its
own transport. aiohttp's errors become httpx's, each as the nearest ``httpx.TransportError``,
which the client retries. A proxy the environment names (``HTTPS_PROXY``, ``NO_PROXY`` and
the like) is used, as httpx would.
"""

from __future__ import annotations

import urllib.request

import aiohttp
import httpx

# httpx's own defaults, as its transport would use them: a pass holds at most its concurrency.
_LIMITS = httpx.Limits()


def http_transport() -> httpx.AsyncBaseTransport:
    """The transport for HealthDock's API."""
    return AiohttpTransport()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx requests sent on an aiohttp session, made at the first request (aiohttp wants a
    running event loop) and closed with the transport."""

    def __init__(self, limits: httpx.Limits = _LIMITS) -> None:
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None
        # Each origin's proxy, read from the environment once: aiohttp's trust_env reads it
        # again at every request, a fifteenth of a page's CPU.
        self._proxies: dict[tuple[str, str], str | None] = {}

    def _proxy(self, url: httpx.URL) -> str | None:
        origin = (url.scheme, url.host)
        if origin not in self._proxies:
            proxy = urllib.request.getproxies().get(url.scheme)
            bypassed = proxy is not None and urllib.request.proxy_bypass(url.host)
            self._proxies[origin] = None if bypassed else proxy
        return self._proxies[origin]

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            keepalive_timeout=self._limits.keepalive_expiry or 0,
            # httpx's trust: certifi's roots, or SSL_CERT_FILE / SSL_CERT_DIR when set (a
            # hospital's own CA), as before the move to aiohttp (whose default is the system's).
            ssl=httpx.create_ssl_context(),
        )
        # Our headers only: httpx has set Accept-Encoding and the rest on the request.
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
        )
        # aiohttp sends a GET again, once, when a kept-alive connection turns out closed. The
        # client must see every request it sends: each takes a slot of the rate budget and is
        # counted on the pass's run, and the client retries with its own backoff. aiohttp's
        # own test client turns the retry off the same way (tests/sync/test_network.py fails
        # where the attribute no longer does it).
        session._retry_connection = False
        return session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = self._open()
        timeout = request.extensions.get("timeout", {})
        try:
            async with self._session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=request.content or None,
                allow_redirects=False,  # httpx decides (the client follows none)
                proxy=self._proxy(request.url),
                timeout=aiohttp.ClientTimeout(
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            ) as response:
                body = await response.read()
                return httpx.Response(
                    response.status,
                    headers=response.raw_headers,
                    content=body,
                    request=request,
                    extensions={"http_version": b"HTTP/1.1"},
                )
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _as_httpx(error, request) from error

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _as_httpx(error: Exception, request: httpx.Request) -> httpx.TransportError:
    """The httpx error nearest to aiohttp's ``error``; its text names no header or body."""
    kind: type[httpx.TransportError]
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(error, TimeoutError):
        kind = httpx.ReadTimeout
    elif isinstance(error, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError
    elif isinstance(error, aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        kind = httpx.ReadError  # a body cut short, a connection reset
    elif isinstance(error, aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError):
        kind = httpx.RemoteProtocolError  # closed before answering, or not HTTP
    elif isinstance(error, aiohttp.InvalidURL):
        kind = httpx.UnsupportedProtocol
    else:
        kind = httpx.NetworkError
    return kind(type(error).__name__, request=request)
