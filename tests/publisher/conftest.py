"""NATS for the publisher's tests: the machine's server (127.0.0.1:4222, JetStream on; .ci/run
starts it) with a stream and subjects of each test's own, or a nats-server of the test's own
(its own port and JetStream store directory) for the tests that stop and restart it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest

from config import Settings
from tests.conftest import make_settings
from tests.support.services import free_port

SHARED_NATS = "nats://127.0.0.1:4222"
NATS_SERVER = "/usr/sbin/nats-server"


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


@dataclass
class Feed:
    """A stream and subjects of this test's own on a NATS server."""

    url: str
    stream: str
    prefix: str

    def settings(self, database_url: str, **overrides: object) -> Settings:
        return make_settings(
            database_url, nats_url=self.url, nats_stream=self.stream,
            nats_subject_prefix=self.prefix, **overrides,
        )  # fmt: skip

    def env(self) -> dict[str, str]:
        """The same, as a process's ``HEALTHDOCK_*`` variables."""
        return {
            "HEALTHDOCK_NATS_URL": self.url,
            "HEALTHDOCK_NATS_STREAM": self.stream,
            "HEALTHDOCK_NATS_SUBJECT_PREFIX": self.prefix,
        }

    def messages(self) -> list[Any]:
        """Every message in the stream, in stream order (``RawStreamMsg``: subject, headers,
        data, seq)."""
        return asyncio.run(_messages(self.url, self.stream))

    def delete(self) -> None:
        asyncio.run(_delete(self.url, self.stream))


async def _messages(url: str, stream: str) -> list[Any]:
    client = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        js = client.jetstream()
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return []
        found: list[Any] = []
        if info.state.messages == 0:
            return found
        for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                found.append(await js.get_msg(stream, seq))
        return found
    finally:
        await client.close()


async def _delete(url: str, stream: str) -> None:
    with contextlib.suppress(Exception):
        client = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
        try:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await client.jetstream().delete_stream(stream)
        finally:
            await client.close()


def _unique() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:10]
    return f"TEST_{tag}", f"test{tag}.events"


@pytest.fixture
def feed() -> Iterator[Feed]:
    """The machine's NATS, a stream of this test's own (deleted afterwards)."""
    assert _answers(4222), "NATS with JetStream must listen on 127.0.0.1:4222 (.ci/run starts it)"
    stream, prefix = _unique()
    made = Feed(SHARED_NATS, stream, prefix)
    yield made
    made.delete()


@dataclass
class NatsServer:
    """A nats-server of the test's own: its port, its JetStream store, started and stopped at
    will (the store survives a restart, as a real server's disk does)."""

    store: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    config: Path | None = None  # a configuration file of the server's (max_payload, say)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        options = [] if self.config is None else ["-c", str(self.config)]
        self.process = subprocess.Popen(
            [NATS_SERVER, *options, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd",
             str(self.store)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while not _answers(self.port):
            assert self.process.poll() is None, "nats-server exited at start"
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: what a crash or a power cut does to it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=15)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def feed(self) -> Feed:
        stream, prefix = _unique()
        return Feed(self.url, stream, prefix)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own, not yet started."""
    server = NatsServer(tmp_path / "jetstream")
    yield server
    server.stop()
