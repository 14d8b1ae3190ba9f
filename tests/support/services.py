"""``healthdock-mirror serve`` and ``worker`` as real processes, for end-to-end reliability tests.

Each runs in its own process group (``start_new_session``), as in the crash harness, so that a
SIGKILL takes the receiver's committer child with it; each writes its output to a log file the
test can read when it fails. Everything listens on loopback only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.factories import SECRET

COMMAND = (str(Path(sys.executable).with_name("healthdock-mirror")),)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment(database_url: str, **settings: object) -> dict[str, str]:
    """This process's environment with ``HEALTHDOCK_<NAME>`` for each of ``settings``.

    No API key unless given: a receiver then runs without the reconcile scheduler.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHDOCK_")}
    env.update(
        HEALTHDOCK_DATABASE_URL=database_url,
        HEALTHDOCK_WEBHOOK_SECRET=SECRET.decode(),
        HEALTHDOCK_LOG_LEVEL="INFO",
    )
    env.update({f"HEALTHDOCK_{name.upper()}": str(value) for name, value in settings.items()})
    return env


@dataclass
class Service:
    """One running service process (group)."""

    process: subprocess.Popen[bytes]
    log: Path
    url: str | None = None  # the receiver's base URL

    @property
    def base_url(self) -> str:
        assert self.url is not None, "not a receiver"
        return self.url

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL the whole group, as a power cut or the OOM killer would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not stopped in time."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def service(
    arguments: list[str],
    env: Mapping[str, str],
    log: Path,
    *,
    url: str | None = None,
    command: Sequence[str] = COMMAND,
) -> Iterator[Service]:
    """Run ``healthdock-mirror <arguments>`` (or ``command``, a stand-in for it); with ``url``,
    wait until its /readyz answers 200."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*command, *arguments],
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Service(process, log, url)
    try:
        if url is not None:
            _wait_ready(running, f"{url}/readyz")
        yield running
    finally:
        running.stop()


def serve(
    database_url: str, log: Path, **settings: object
) -> contextlib.AbstractContextManager[Service]:
    """A receiver (no scheduler) on a free loopback port, ready when entered."""
    port = free_port()
    env = environment(database_url, port=port, **settings)
    return service(["serve", "--no-scheduler"], env, log, url=f"http://127.0.0.1:{port}")


def worker(
    database_url: str, log: Path, **settings: object
) -> contextlib.AbstractContextManager[Service]:
    """A reconcile worker (the scheduler only)."""
    return service(["worker"], environment(database_url, **settings), log)


def _wait_ready(running: Service, url: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise RuntimeError(
                f"the service exited with {running.process.returncode} before it was ready:\n"
                + running.output()[-2000:]
            )
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the service was not ready within {seconds:.0f} s")
