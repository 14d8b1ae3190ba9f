"""The receiver as served (receiver/server.py): `healthdock-mirror serve` on a loopback port,
spoken to over raw sockets, as a client that is slow, huge or too many would.

Short deadlines, set through settings, keep the module fast; each assertion waits on what a
client sees (an answer, the connection closing) with a deadline, never on a fixed sleep.
Where a client is slow on purpose, its pauses are the scenario under test.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from config import SettingsError, load_settings
from tests.factories import encode, event, patient, signed
from tests.support.services import Service, serve

MAX_HEADER_BYTES = 8192
HEAD_SECONDS = 1.0
BODY_SECONDS = 2.0
LIMITS = {
    "max_header_bytes": MAX_HEADER_BYTES,
    "header_timeout_seconds": HEAD_SECONDS,
    "body_timeout_seconds": BODY_SECONDS,
}
# What a deadline may overshoot by on a loaded machine before the test calls it missed.
SLACK_SECONDS = 2.0


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    directory = tmp_path_factory.mktemp("served")
    with serve(f"sqlite:///{directory / 'mirror.db'}", directory / "serve.log", **LIMITS) as up:
        yield up


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, object]:
        """The error envelope's ``error`` member (and the envelope is checked whole)."""
        document = json.loads(self.body)
        assert document["success"] is False
        assert self.headers["content-type"] == "application/json"
        error: dict[str, object] = document["error"]
        assert set(error) == {"code", "message", "details"}
        return error


class Client:
    """One TCP connection to the receiver, reading answers as bytes arrive."""

    def __init__(self, service: Service) -> None:
        port = int(service.base_url.rsplit(":", 1)[1])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read once more before ``deadline``; False when the receiver closed its side."""
        self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        except TimeoutError:
            raise AssertionError("the receiver neither answered nor closed in time") from None
        self._buffer += chunk
        return bool(chunk)

    def answer(self, within: float) -> Answer:
        """The next answer on this connection, arriving within ``within`` seconds."""
        deadline = time.monotonic() + within
        while b"\r\n\r\n" not in self._buffer:
            assert self._fill(deadline), f"closed without an answer: {self._buffer!r}"
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self._buffer) < length:
            assert self._fill(deadline), "closed in the middle of an answer"
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return Answer(int(status_line.split()[1]), headers, body)

    def closed(self, within: float) -> bool:
        """Whether the receiver closes this connection within ``within`` seconds (what it
        sends meanwhile is kept for :meth:`answer`)."""
        deadline = time.monotonic() + within
        try:
            while time.monotonic() < deadline:
                if not self._fill(deadline):
                    return True
        except AssertionError:
            return False
        return False


def request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def webhook() -> tuple[bytes, dict[str, str]]:
    body = encode(event("patient.created", patient(f"PAT{time.monotonic_ns() % 10**9:09d}")))
    return body, signed(body)


def open_files(pid: int) -> int:
    """How many file descriptors (sockets among them) the process holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the head's size ------------------------------------------------------------------------


def test_a_head_over_the_limit_is_refused_431_after_reading_about_the_limit(
    receiver: Service,
) -> None:
    """64 MiB in one header: refused once the limit is passed, in the error envelope, the
    connection closed; the receiver spends next to no CPU on it (httptools alone would spend
    seconds accumulating the header, and answer 200)."""
    client = Client(receiver)
    huge = 64 * 1024 * 1024
    sent = []

    def send_huge_header() -> None:
        # As an attacker would: without waiting for an answer. The receiver may close first.
        try:
            client.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: ")
            piece = b"a" * (1024 * 1024)
            for _ in range(huge // len(piece)):
                client.send(piece)
                sent.append(len(piece))
            client.send(b"\r\n\r\n")
        except OSError:
            pass

    cpu_before, started = cpu_seconds(receiver.pid), time.monotonic()
    sender = threading.Thread(target=send_huge_header, daemon=True)
    sender.start()
    answer = client.answer(within=5)
    answered_after = time.monotonic() - started
    assert answer.status == 431
    assert answer.headers["connection"] == "close"
    error = answer.error()
    assert error["code"] == "REQUEST_HEADER_FIELDS_TOO_LARGE"
    assert str(MAX_HEADER_BYTES) in str(error["message"])
    assert client.closed(within=SLACK_SECONDS)
    sender.join(timeout=30)
    cpu_spent = cpu_seconds(receiver.pid) - cpu_before
    print(
        f"64 MiB header: 431 after {answered_after * 1000:.0f} ms, "
        f"{sum(sent) / 2**20:.0f} MiB sent (dropped unparsed while the answer lingered), "
        f"receiver CPU {cpu_spent:.2f} s"
    )
    assert cpu_spent < 1.0
    client.close()
    assert httpx.get(f"{receiver.base_url}/healthz").status_code == 200


def test_a_head_under_the_limit_is_served(receiver: Service) -> None:
    client = Client(receiver)
    filler = "a" * (MAX_HEADER_BYTES - 200)
    client.send(request("GET", "/healthz", headers={"X-Filler": filler}))
    assert client.answer(within=5).status == 200
    client.close()


def test_a_signed_webhook_whose_first_packet_passes_the_limit_is_received(
    receiver: Service,
) -> None:
    """Head and body arrive together, more bytes than the head limit: only the head counts."""
    body = encode(event("patient.created", patient(notes="n" * (4 * MAX_HEADER_BYTES))))
    client = Client(receiver)
    client.send(request("POST", "/webhooks/healthdock", body, signed(body)))
    answer = client.answer(within=10)
    assert answer.status == 200, answer.body
    assert json.loads(answer.body)["data"]["status"] == "applied"
    client.close()


# --- deadlines ------------------------------------------------------------------------------


def _trickle(client: Client, data: bytes, every: float, stop: threading.Event) -> None:
    """Send ``data`` a few bytes at a time, ``every`` seconds apart, until told to stop or
    the receiver closes the connection."""
    for start in range(0, len(data), 4):
        if stop.wait(every):
            return
        try:
            client.send(data[start : start + 4])
        except OSError:
            return


def test_a_head_not_complete_in_time_is_answered_408_and_closed(receiver: Service) -> None:
    silent, slow = Client(receiver), Client(receiver)
    stop = threading.Event()
    started = time.monotonic()
    trickler = threading.Thread(
        target=_trickle,
        args=(slow, b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 1000, 0.1, stop),
        daemon=True,
    )
    trickler.start()
    try:
        for client in (silent, slow):
            answer = client.answer(within=HEAD_SECONDS + SLACK_SECONDS)
            assert answer.status == 408
            assert answer.headers["connection"] == "close"
            assert answer.error()["code"] == "REQUEST_TIMEOUT"
            assert client.closed(within=SLACK_SECONDS)
        # Not before its time: the slow head was still arriving, byte by byte, all along.
        assert time.monotonic() - started >= HEAD_SECONDS * 0.9
    finally:
        stop.set()
        trickler.join()
        silent.close()
        slow.close()


def test_a_body_not_complete_in_time_is_answered_408_and_closed(receiver: Service) -> None:
    """A signed webhook whose body arrives a few bytes at a time, never finishing in time."""
    body = encode(event("patient.created", patient(notes="n" * 2000)))
    head, rest = request("POST", "/webhooks/healthdock", body, signed(body)).split(b"\r\n\r\n", 1)
    client = Client(receiver)
    stop = threading.Event()
    client.send(head + b"\r\n\r\n")
    head_sent = time.monotonic()
    trickler = threading.Thread(target=_trickle, args=(client, rest, 0.05, stop), daemon=True)
    trickler.start()
    try:
        answer = client.answer(within=BODY_SECONDS + SLACK_SECONDS)
        waited = time.monotonic() - head_sent
        assert answer.status == 408
        assert "body" in str(answer.error()["message"])
        assert client.closed(within=SLACK_SECONDS)
        # The body's deadline (longer than the head's) ran from the end of the head.
        assert waited >= BODY_SECONDS * 0.9
    finally:
        stop.set()
        trickler.join()
        client.close()


def test_kept_alive_requests_and_heads_split_into_pieces_are_unaffected(
    receiver: Service,
) -> None:
    """A connection idle between requests for longer than the head's deadline keeps being
    served: the deadline runs from a request's first byte. A head in pieces that completes
    in time is served too."""
    client = Client(receiver)
    for _ in range(3):
        client.send(request("GET", "/healthz"))
        answer = client.answer(within=5)
        assert answer.status == 200
        assert answer.headers.get("connection") != "close"
        time.sleep(HEAD_SECONDS * 0.6)  # an idle client: the scenario, not a synchronization
    body, headers = webhook()
    data = request("POST", "/webhooks/healthdock", body, headers)
    for start in range(0, len(data), len(data) // 5 + 1):
        client.send(data[start : start + len(data) // 5 + 1])
        time.sleep(HEAD_SECONDS / 20)  # a slow, honest sender
    answer = client.answer(within=5)
    assert answer.status == 200, answer.body
    assert json.loads(answer.body)["data"]["status"] == "applied"
    client.close()


def test_an_upgrade_request_is_plain_http_and_closes_its_connection(receiver: Service) -> None:
    """No WebSocket is served: the request is answered as HTTP; httptools reads nothing after
    an Upgrade head, so the connection ends there rather than hang."""
    client = Client(receiver)
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
    client.send(request("GET", "/healthz", headers=upgrade))
    answer = client.answer(within=5)
    assert answer.status == 200
    assert answer.headers["connection"] == "close"
    assert client.closed(within=SLACK_SECONDS)
    client.close()


# --- the connection ceiling -----------------------------------------------------------------


def test_connections_over_the_ceiling_are_refused_503_until_slow_ones_are_gone(
    tmp_path: Path,
) -> None:
    ceiling = 4
    database_url = f"sqlite:///{tmp_path / 'mirror.db'}"
    with serve(database_url, tmp_path / "serve.log", max_connections=ceiling, **LIMITS) as up:
        sockets_before = open_files(up.pid)
        slow = [Client(up) for _ in range(ceiling)]
        for client in slow:
            client.send(b"POST /webhooks/healthdock HTTP/1.1\r\n")  # and nothing more
        body, headers = webhook()
        refused = Client(up)
        refused.send(request("POST", "/webhooks/healthdock", body, headers))
        answer = refused.answer(within=5)
        assert answer.status == 503
        assert answer.headers["retry-after"] == "5"
        assert answer.headers["connection"] == "close"
        assert answer.error()["code"] == "SERVICE_UNAVAILABLE"
        assert refused.closed(within=SLACK_SECONDS)
        # A flood on top, whose clients never close: each is refused and closed, and the
        # receiver holds no more sockets than twice the ceiling (refused ones linger a moment
        # so that their clients can read the answer, up to the ceiling at once).
        flood = [Client(up) for _ in range(50)]
        for client in flood:
            assert client.closed(within=SLACK_SECONDS)
        assert open_files(up.pid) - sockets_before <= 2 * ceiling
        # The slow ones meet their head's deadline; then an honest sender gets in again.
        for client in slow:
            assert client.answer(within=HEAD_SECONDS + SLACK_SECONDS).status == 408
            client.close()
        answered = httpx.post(f"{up.base_url}/webhooks/healthdock", content=body, headers=headers)
        assert answered.status_code == 200, answered.text
        assert answered.json()["data"]["status"] == "applied"
        for client in [refused, *flood]:
            client.close()
    assert "HEALTHDOCK_MAX_CONNECTIONS" in up.output()


def test_the_limits_are_settings_with_defaults_and_bounds() -> None:
    settings = load_settings(_env_file=None)
    assert settings.max_header_bytes == 32 * 1024
    assert settings.header_timeout_seconds == 10
    assert settings.body_timeout_seconds == 30
    assert settings.max_connections == 256
    for name, value in [("max_header_bytes", 100), ("header_timeout_seconds", 0),
                        ("body_timeout_seconds", -1), ("max_connections", 0)]:  # fmt: skip
        with pytest.raises(SettingsError, match=f"HEALTHDOCK_{name.upper()}"):
            load_settings(_env_file=None, **{name: value})
