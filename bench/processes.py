"""Child processes of a benchmark runner: start them so they die with it, stop them cleanly.

Shared by bench/ingest and bench/sync, which start servers and commands and must leave
nothing running whatever happens to the runner.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
from contextlib import suppress
from typing import Any

_PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """The benchmark cannot go on (a server did not start, a command failed, ...)."""


def die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if this runner dies, even by SIGKILL."""
    with suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop(process: subprocess.Popen[Any], grace_seconds: float = 20.0) -> int | None:
    """Stop a child we started: SIGTERM (a server drains and shuts down), then SIGKILL."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def unwind_on_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP unwind like Ctrl-C, so every `finally` stops its process."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Also SIGINT: a shell starts background jobs with it ignored, and Python keeps that.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
