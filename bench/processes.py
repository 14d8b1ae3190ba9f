"""Child processes of a benchmark runner: start them so they die with it, stop them cleanly.

Shared by the runners under bench/, which start servers, commands and wrk, and must leave
nothing running whatever happens to the runner.
"""

from __future__ import annotations

import compileall
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
# The line a measuring script (a wrk Lua script, dlt_load.py) prints its JSON result after.
RESULT_MARKER = "BENCH_RESULT "


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


def project_packages(tree: Path) -> list[str]:
    """The top-level packages a checkout installs, as its pyproject.toml lists them."""
    with (tree / "pyproject.toml").open("rb") as file:
        found = tomllib.load(file)["tool"]["setuptools"]["packages"]["find"]["include"]
    return [pattern.removesuffix("*") for pattern in found if pattern.endswith("*")]


def compile_bytecode(tree: Path) -> None:
    """Cache the bytecode of a checkout's packages, as installing the project's wheel would.

    A checkout installed in editable mode has none until Python writes it, and where
    PYTHONDONTWRITEBYTECODE is set (this workplace's machines set it) Python never does: every
    command would compile the project's modules again (0.17 CPU-s of `healthdock-mirror
    --help`), which a hospital's installed service does not, nor dlt, compiled by pip.
    """
    for package in project_packages(tree):
        if not compileall.compile_dir(tree / package, quiet=1):
            raise BenchError(f"{tree / package} does not compile")


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class ScriptResult:
    """What one run of a measuring script reported (the JSON after RESULT_MARKER)."""

    result: dict[str, Any]
    stdout: str
    wall_s: float  # spawn to exit, as this runner saw it


def run_reporting(
    command: Sequence[str],
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    *,
    ready: Sequence[Path] = (),
    on_ready: Callable[[], object] | None = None,
) -> ScriptResult:
    """Run ``command`` (wrk with one of our Lua scripts) to its end and read its result line.

    With ``ready``, the files the script creates once it has loaded its input (one a wrk
    thread), ``on_ready`` is called as soon as all exist, before the script's clock has run
    for more than a few milliseconds: what is read then leaves the loading out.

    It dies with the runner and is stopped if it outlives ``timeout_s``; a failed run, or one
    that printed no result, is a BenchError with its output.
    """
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=None if env is None else dict(env),
        preexec_fn=die_with_parent,  # the runners start no threads, so it is safe
    )
    began = time.monotonic()
    was_ready = False
    try:
        if on_ready is not None:
            # wrk prints two lines as it starts and the rest as it ends: its pipe cannot fill
            # while this waits.
            while process.poll() is None and time.monotonic() - began < timeout_s:
                if all(path.exists() for path in ready):
                    on_ready()
                    was_ready = True
                    break
                time.sleep(0.002)
        stdout, _ = process.communicate(timeout=max(timeout_s - (time.monotonic() - began), 1))
    finally:
        stop(process, grace_seconds=5)
    wall_s = time.monotonic() - began
    marker = next((line for line in stdout.splitlines() if line.startswith(RESULT_MARKER)), None)
    if process.returncode != 0 or marker is None:
        raise BenchError(f"wrk failed ({process.returncode}):\n{stdout}")
    if on_ready is not None and not was_ready:
        raise BenchError(f"wrk ended without creating {[str(p) for p in ready]}:\n{stdout}")
    return ScriptResult(json.loads(marker.removeprefix(RESULT_MARKER)), stdout, wall_s)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (None once the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces.
    return stat.rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its threads, from /proc (0 once it is gone)."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, theirs, ...), as they are now."""
    children: dict[int, list[int]] = {}
    for other in _all_pids():
        fields = _stat(other)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(other)
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def processes_named(name: str) -> list[int]:
    """The processes whose command name (``comm``) is ``name``: e.g. every PostgreSQL one."""
    named = []
    for pid in _all_pids():
        with suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                named.append(pid)
    return named


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds of each of ``pids`` now (see :func:`cpu_between`)."""
    return {pid: process_cpu_seconds(pid) for pid in pids}


def cpu_between(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU seconds a group of processes spent between two :func:`cpu_seconds` of it, each
    listing the group as it was then: one started in between counts whole; one that ended in
    between is not counted (/proc forgets it)."""
    return sum(
        max(seconds - before.get(pid, 0.0), 0.0) for pid, seconds in after.items() if seconds
    )
