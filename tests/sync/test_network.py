"""sync/network.py: the reconciler's transport on real loopback sockets.

aiohttp carries the connections; what the client relies on is httpx's behaviour: its errors
(each a ``httpx.TransportError``, which the client retries), bodies decoded as their
``Content-Encoding`` says, timeouts, and no request sent that the client did not send.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fake_healthdock import FakeHealthDock, serve_in_thread
from sync.network import http_transport

API_KEY = "network-api-key"


def test_a_pass_worth_of_requests_does_not_ask_each_socket_its_peer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx's own pool called getpeername for every connection at every request (a fifth of
    a page fetch's CPU); aiohttp's asks once a connection. 200 requests on 8 connections stay
    far below one call a request."""
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
            async with httpx.AsyncClient(transport=transport) as client:
                statuses = []
                for _ in range(2):
                    statuses.append((await client.get(url)).status_code)
                    await asyncio.sleep(0.05)  # the server's close reaches us
            return statuses, served

    statuses, served = asyncio.run(twice())
    assert statuses == [200, 200]
    assert served == [1, 1]  # the second request went on a new connection


def test_a_proxy_the_environment_names_carries_the_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hospital's egress proxy, named as httpx would read it (HTTP_PROXY here; HTTPS_PROXY
    tunnels TLS the same way): the request goes to it, in absolute form."""
    lines: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        writer.write(answer(b'{"via": "proxy"}'))
        await writer.drain()

    async def scenario() -> list[str]:
        async with scripted_server(proxy, lines) as (proxy_url, _):
            monkeypatch.setenv("HTTP_PROXY", proxy_url)
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            return await get_all("http://healthdock.invalid/v1/patients?page=1", 1)

    assert asyncio.run(scenario()) == ["200 {'via': 'proxy'}"]
    assert lines == [b"GET http://healthdock.invalid/v1/patients?page=1 HTTP/1.1"]


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@asynccontextmanager
async def scripted_server(
    handler: Handler, lines: list[bytes] | None = None, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback server; ``handler`` gets each request's reader, writer and its number on
    the connection (from 1). Yields its URL and the requests each connection got; each
    request line goes to ``lines``, if given."""
    served: list[int] = []

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(0)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                served[-1] += 1
                if lines is not None:
                    lines.append(head.split(b"\r\n", 1)[0])
                await handler(reader, writer, served[-1])
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", served


def answer(body: bytes, *extra: bytes) -> bytes:
    return b"\r\n".join([b"HTTP/1.1 200 OK", b"content-type: application/json", *extra,
                          b"content-length: %d" % len(body), b"", body])  # fmt: skip


async def get_all(url: str, times: int, timeout_seconds: float = 5.0) -> list[str]:
    """Each request's status, or the name of the httpx error it raised."""
    transport = http_transport()
    outcomes = []
    async with httpx.AsyncClient(transport=transport, timeout=timeout_seconds) as client:
        for _ in range(times):
            try:
                response = await client.get(url)
                outcomes.append(f"{response.status_code} {response.json()}")
            except httpx.TransportError as error:
                outcomes.append(type(error).__name__)
    return outcomes


def test_a_kept_alive_connection_the_server_drops_is_an_error_not_a_request_sent_again() -> None:
    """aiohttp would send the GET again on a new connection: a request the client did not
    send, outside the rate budget and uncounted. The client sees the error and retries."""

    async def first_only(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            writer.write(answer(b'{"page": 1}'))
            await writer.drain()
        else:
            writer.close()  # the second request on the connection: dropped unanswered

    async def scenario() -> tuple[list[str], list[int]]:
        async with scripted_server(first_only) as (url, served):
            return await get_all(url, 2), served

    outcomes, served = asyncio.run(scenario())
    assert outcomes == ["200 {'page': 1}", "RemoteProtocolError"]
    assert served == [2]  # both on the first connection; none sent again on another


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (answer(b'{"cut": "short"}')[:-6], "ReadError"),  # fewer bytes than content-length
        (b"NOT HTTP AT ALL\r\n\r\n", "RemoteProtocolError"),
        (b"", "RemoteProtocolError"),  # closed without a word
    ],
)
def test_a_broken_answer_is_an_httpx_transport_error(reply: bytes, error: str) -> None:
    async def broken(_: asyncio.StreamReader, writer: asyncio.StreamWriter, __: int) -> None:
        writer.write(reply)
        await writer.drain()
        writer.close()

    async def scenario() -> list[str]:
        async with scripted_server(broken) as (url, _):
            return await get_all(url, 1)

    assert asyncio.run(scenario()) == [error]


def test_a_server_that_does_not_answer_in_time_is_a_read_timeout() -> None:
    async def silent(_: asyncio.StreamReader, __: asyncio.StreamWriter, ___: int) -> None:
        await asyncio.sleep(2)

    async def scenario() -> list[str]:
        async with scripted_server(silent) as (url, _):
            return await get_all(url, 1, timeout_seconds=0.2)

    assert asyncio.run(scenario()) == ["ReadTimeout"]


def test_nobody_listening_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: refused
        outcomes = asyncio.run(get_all(f"http://127.0.0.1:{port}/", 1))
    assert outcomes == ["ConnectError"]


def test_a_gzipped_page_is_decoded_as_httpx_would() -> None:
    async def zipped(_: asyncio.StreamReader, writer: asyncio.StreamWriter, __: int) -> None:
        writer.write(answer(gzip.compress(b'{"zipped": true}'), b"content-encoding: gzip"))
        await writer.drain()

    async def scenario() -> list[str]:
        async with scripted_server(zipped) as (url, _):
            return await get_all(url, 2)

    assert asyncio.run(scenario()) == ["200 {'zipped': True}"] * 2


def self_signed(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 with a certificate no public root signed, and that
    certificate's file (what a hospital's own CA would be)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "healthdock.hospital.test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


def test_tls_is_verified_against_httpxs_roots_and_a_ca_the_environment_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A certificate no trusted root signed is refused; named in SSL_CERT_FILE (a hospital's
    own CA, as httpx reads it), it is trusted."""
    context, cert_file = self_signed(tmp_path)

    async def ok(_: asyncio.StreamReader, writer: asyncio.StreamWriter, __: int) -> None:
        writer.write(answer(b'{"tls": true}'))
        await writer.drain()

    async def scenario() -> list[str]:
        async with scripted_server(ok, tls=context) as (url, _):
            refused = await get_all(url, 1)
            monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
            return refused + await get_all(url, 1)

    assert asyncio.run(scenario()) == ["ConnectError", "200 {'tls': True}"]
