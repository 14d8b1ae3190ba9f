"""Sync benchmark: our reconciler against the fake HealthDock, in three parts.

- ``throughput`` (a): records per second that ``healthdock-mirror sync patients`` mirrors
  from the fake with no rate limit, and its CPU seconds per record, next to dlt's
  ``rest_api`` source (merging on ``id``) loading the same fake into the same kind of
  database; rounds alternate ours and dlt (ABBA), each tool's first pass on an empty
  database, then its second pass into the same one with nothing changed upstream (the
  steady state), on SQLite and PostgreSQL, without latency at each ``--patients`` size and
  with per-request latency.
- ``ratelimit`` (b): wall time of a reconcile under a rate limit against the theoretical
  minimum (pages / the requests per second our share of the limit allows), with 429s.
- ``memory`` (c): peak RSS of ``healthdock-mirror sync patients`` at 10,000, 200,000 and
  1,000,000 patients (SQLite), the fake serving from a process of its own.

Every measured command runs in a process of its own and is timed whole (start-up included).
Prints a Markdown table per part and writes the raw numbers to bench/sync/results/.

    .venv/bin/python -m bench.sync.run                         # all three parts
    .venv/bin/python -m bench.sync.run throughput --databases sqlite   # one part, one database
    .venv/bin/python -m bench.sync.run --smoke                 # tiny sizes: a check that it runs
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from bench.databases import drop_pg_database, pg_service_url, pg_settings, recreate_pg_database
from bench.processes import (
    RESULT_MARKER,
    BenchError,
    compile_bytecode,
    die_with_parent,
    port_is_free,
    process_cpu_seconds,
    stop,
    unwind_on_signals,
)

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
DLT_SCRIPT = HERE / "dlt_load.py"
RESULTS = HERE / "results"
PARTS = ("throughput", "ratelimit", "memory")
PART_ALIASES = {"a": "throughput", "b": "ratelimit", "c": "memory"}
TOOLS = ("ours", "dlt")
# With --baseline-tree: our command from another checkout (an earlier commit), in the same
# rounds, so a change is measured against what it changed, side by side.
BASELINE = "baseline"
OUR_COMMANDS = ("ours", BASELINE)
# A benchmark-only dependency: the runner installs it into this interpreter when missing.
DLT_REQUIREMENT = "dlt[sqlalchemy,postgres]>=1.31,<2"
PAGE_SIZE = 100  # the API's largest page; ours and dlt both ask for it
# Goals, from the issues.
GOAL_THROUGHPUT_RATIO = 5.0  # (a) ours' records/s against dlt's, every scenario
GOAL_CPU_PER_RECORD_RATIO = 0.5  # (a) ours' CPU per record against dlt's, at most (no latency)
GOAL_LATENCY_WALL_RATIO = 8.0  # (a) dlt's wall time against ours', at least (latency)
GOAL_STEADY_RECORDS_PER_CPU_S = 50_000  # (a) ours' second pass, at least
GOAL_STEADY_PATIENTS = 200_000  # ... at this size (no latency)
GOAL_RATELIMIT_SLACK = 1.10
GOAL_MEMORY_RATIO = 1.2  # (c) "flat": peak RSS at the largest size against the smallest
# The passes of (a): into the empty database, then again with nothing changed upstream.
FIRST_PASS, SECOND_PASS = 1, 2
DLT_WRITE_DISPOSITIONS = ("merge", "append")
# Lines of a command's log that mean something went wrong during a run.
LOG_PROBLEMS = ("WARNING", "ERROR", "CRITICAL", "Traceback")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _log_problems(path: Path) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if any(p in line for p in LOG_PROBLEMS)]


def _proc_status_kib(pid: int, *names: str) -> dict[str, int]:
    """``VmRSS``, ``VmHWM``, ... of ``pid`` in KiB, from /proc (empty once it has exited)."""
    found: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        key, _, value = line.partition(":")
        if key in names:
            with suppress(ValueError, IndexError):
                found[key] = int(value.split()[0])
    return found


def _shell_line(command: Sequence[str], env: dict[str, str] | None = None) -> str:
    """The command as one could paste it: its own variables first (HEALTHDOCK_*, dlt's)."""
    prefix = [f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()]
    return " ".join([*prefix, shlex.join([str(c) for c in command])])


@dataclass
class Measured:
    """One command, timed whole, with its own resource usage (``wait4``, not the children's
    running maximum, which would include the fake's)."""

    command: str
    wall_s: float
    returncode: int
    timed_out: bool
    cpu_s: float  # user + system CPU seconds of the process (and of anything it waited for)
    max_rss_kib: int  # the kernel's peak resident set (ru_maxrss)
    hwm_kib: int | None  # the last VmHWM read while it ran: a cross-check of max_rss_kib
    rss_samples: list[tuple[float, int]]  # (seconds since start, VmRSS KiB)
    stdout_tail: str = ""
    result: dict[str, Any] | None = None  # the BENCH_RESULT line, for dlt
    user_s: float = 0.0
    sys_s: float = 0.0


def run_measured(
    command: Sequence[str],
    env: dict[str, str],
    cwd: Path,
    log: Path,
    timeout_s: float,
    *,
    shown_env: dict[str, str] | None = None,
    sample_every_s: float = 0.0,
) -> Measured:
    """Run ``command`` to its end; wall time from spawn to exit, CPU and peak RSS by wait4."""
    samples: list[tuple[float, int]] = []
    hwm: list[int] = []
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # No other thread runs while it forks: the sampler and the watchdog start after.
            preexec_fn=die_with_parent,
            start_new_session=True,
        )
    began = time.monotonic()
    expired = threading.Event()
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(timeout_s):
            expired.set()
            with suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)

    def sampler() -> None:
        while not done.wait(sample_every_s):
            status = _proc_status_kib(process.pid, "VmRSS", "VmHWM")
            if "VmRSS" in status:
                samples.append((round(time.monotonic() - began, 2), status["VmRSS"]))
            if "VmHWM" in status:
                hwm.append(status["VmHWM"])

    threads = [threading.Thread(target=watchdog, daemon=True)]
    if sample_every_s > 0:
        threads.append(threading.Thread(target=sampler, daemon=True))
    for thread in threads:
        thread.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
        wall_s = time.monotonic() - began
        process.returncode = os.waitstatus_to_exitcode(status)
    finally:
        done.set()
        for thread in threads:
            thread.join()
        if process.returncode is None:  # interrupted while it ran
            stop(process, grace_seconds=5)
    text = log.read_text(errors="replace")
    marker = next((ln for ln in text.splitlines() if ln.startswith(RESULT_MARKER)), None)
    return Measured(
        command=_shell_line(command, shown_env),
        wall_s=wall_s,
        returncode=process.returncode,
        timed_out=expired.is_set(),
        cpu_s=usage.ru_utime + usage.ru_stime,
        max_rss_kib=usage.ru_maxrss,
        hwm_kib=max(hwm) if hwm else None,
        rss_samples=samples,
        stdout_tail="\n".join(text.splitlines()[-15:]),
        result=json.loads(marker.removeprefix(RESULT_MARKER)) if marker else None,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
    )


def base_env() -> dict[str, str]:
    """This environment without any HealthDock setting of the owner's, which would leak in."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HEALTHDOCK_", "FAKE_HEALTHDOCK_", "RUNTIME__", "DLT_"))
    }


# --- the fake -------------------------------------------------------------------------------


@dataclass
class Fake:
    base_url: str
    process: subprocess.Popen[bytes]
    command: str
    log: Path

    def stats(self) -> dict[str, int]:
        """The fake's API counters (``/_fake/stats`` is outside /v1: no rate limit)."""
        return dict(_get_json(self.base_url, "/_fake/stats")["data"]["api"])

    def cpu_s(self) -> float:
        return process_cpu_seconds(self.process.pid)


def _get_json(base_url: str, path: str, timeout: float = 10) -> Any:
    url = make_url_parts(base_url)
    connection = http.client.HTTPConnection(url[0], url[1], timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise BenchError(f"GET {path}: {response.status}")
        return json.loads(body)
    finally:
        connection.close()


def make_url_parts(base_url: str) -> tuple[str, int]:
    host_port = base_url.split("://", 1)[1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    return host, int(port)


@contextmanager
def running_fake(
    args: argparse.Namespace,
    workdir: Path,
    label: str,
    *,
    patients: int,
    latency: tuple[float, float] | None = None,
    rate_limit: int | None = None,
    window_s: int = 60,
) -> Iterator[Fake]:
    """``python -m fake_healthdock`` in a process of its own, ready; always stopped on exit."""
    if not port_is_free(args.host, args.port):
        raise BenchError(f"{args.host}:{args.port} is already in use; pick another --port")
    command = [
        sys.executable,
        "-m",
        "fake_healthdock",
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--patients",
        str(patients),
        "--seed",
        str(args.seed),
        "--api-key",
        args.api_key,
        "--rate-limit",
        str(rate_limit or 0),
        "--window",
        str(window_s),
        "--log-level",
        "warning",
    ]
    if latency is not None:
        command += ["--latency", f"{latency[0]:g}", f"{latency[1]:g}"]
    log = workdir / f"fake-{label}.log"
    base_url = f"http://{args.host}:{args.port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=base_env(),
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # no other thread runs now
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise BenchError(f"the fake exited with {process.returncode}:\n{_tail(log)}")
            try:
                _get_json(base_url, "/_fake/stats", timeout=2)
                break
            except (OSError, http.client.HTTPException, BenchError):
                if time.monotonic() > deadline:
                    raise BenchError(f"the fake did not start in 120 s:\n{_tail(log)}") from None
                time.sleep(0.1)
        yield Fake(base_url, process, shlex.join(command), log)
    finally:
        stop(process)


# --- databases ------------------------------------------------------------------------------


def fresh_database(kind: str, workdir: Path, label: str, args: argparse.Namespace) -> str:
    """An empty database: a new SQLite file, or ``--pg-database`` dropped and recreated."""
    if kind == "sqlite":
        path = workdir / f"{label}.db"
        remove_sqlite(path)
        return f"sqlite:///{path}"
    recreate_pg_database(args.pg_admin_url, args.pg_database)
    return pg_service_url(args.pg_admin_url, args.pg_database)


def remove_sqlite(path: Path) -> None:
    """The file, its WAL and journal, and the files of the other datasets dlt's sqlalchemy
    destination keeps beside it (``<name>__main_staging.db``: its merge's staging tables)."""
    for database in [path, *path.parent.glob(f"{path.stem}__*{path.suffix}")]:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with suppress(FileNotFoundError):
                Path(f"{database}{suffix}").unlink()


def discard_database(kind: str, url: str, args: argparse.Namespace) -> None:
    """Free the disk a run used (a 200,000-patient mirror is a few hundred MB)."""
    if args.keep_workdir:
        return
    if kind == "sqlite":
        remove_sqlite(Path(make_url(url).database or ""))


def _query(kind: str, url: str, query: str) -> list[tuple[Any, ...]]:
    if kind == "sqlite":
        path = make_url(url).database
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return connection.execute(query).fetchall()
        finally:
            connection.close()
    with psycopg.connect(url) as pg:
        return [tuple(row) for row in pg.execute(query).fetchall()]


def count_rows(kind: str, url: str, table: str) -> int | None:
    """Rows in ``table``, or None when it is not there (the load failed early)."""
    try:
        rows = _query(kind, url, f"SELECT count(*) FROM {table}")
    except (sqlite3.Error, psycopg.Error):
        return None
    return int(rows[0][0])


def last_sync_run(kind: str, url: str) -> dict[str, Any]:
    """Our last ``sync_runs`` row: requests, 429s and the pass's own start and end."""
    columns = ("outcome", "pages", "records", "requests", "rate_limited", "errors")
    rows = _query(
        kind,
        url,
        f"SELECT {', '.join(columns)}, started_at, finished_at FROM sync_runs "
        "ORDER BY id DESC LIMIT 1",
    )
    if not rows:
        return {}
    row = rows[0]
    found: dict[str, Any] = dict(zip(columns, row[: len(columns)], strict=True))
    started, finished = (_as_datetime(v) for v in row[len(columns) :])
    found["pass_s"] = (finished - started).total_seconds() if started and finished else None
    # Set just before the pass's first request (after start-up, the lease and the client).
    found["started_epoch"] = started.timestamp() if started else None
    return found


def _as_datetime(value: object) -> datetime | None:
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    # SQLite keeps naive UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- the commands ---------------------------------------------------------------------------


def ours_env(url: str, base_url: str, args: argparse.Namespace) -> dict[str, str]:
    return {
        "HEALTHDOCK_DATABASE_URL": url,
        "HEALTHDOCK_API_URL": f"{base_url}/v1",
        "HEALTHDOCK_API_KEY": args.api_key,
        "HEALTHDOCK_SYNC_CONCURRENCY": str(args.concurrency),
        "HEALTHDOCK_SYNC_RATE_RESERVE": f"{args.reserve:g}",
        "HEALTHDOCK_SYNC_PAGE_SIZE": str(PAGE_SIZE),
    }


def tree_env(tool: str, args: argparse.Namespace) -> dict[str, str]:
    """The baseline's command runs this repository's entry point on the other checkout's
    code: its directory goes first on the module path."""
    if tool != BASELINE:
        return {}
    return {"PYTHONPATH": str(Path(args.baseline_tree).resolve())}


def migrate(
    url: str, base_url: str, workdir: Path, args: argparse.Namespace, tool: str = "ours"
) -> None:
    env = {**base_env(), **ours_env(url, base_url, args), **tree_env(tool, args)}
    done = subprocess.run(
        [str(BIN / "healthdock-mirror"), "migrate"],
        env=env,
        cwd=workdir,  # not the repository: its .env, if any, must not configure the run
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"healthdock-mirror migrate failed:\n{done.stdout}{done.stderr}")


def run_ours(
    url: str,
    fake: Fake,
    workdir: Path,
    label: str,
    args: argparse.Namespace,
    tool: str = "ours",
    **options: Any,
) -> Measured:
    """``healthdock-mirror sync patients`` into ``url``, already migrated (``tool``: ours, or
    the baseline checkout's)."""
    env = {**ours_env(url, fake.base_url, args), **tree_env(tool, args)}
    # Wide enough that the command's summary table in the log is readable.
    full_env = {**base_env(), **env, "COLUMNS": "160"}
    return run_measured(
        [str(BIN / "healthdock-mirror"), "sync", "patients"],
        full_env,
        workdir,
        workdir / f"{label}.log",
        args.timeout,
        shown_env=env,
        **options,
    )


def run_dlt(
    url: str, fake: Fake, workdir: Path, label: str, args: argparse.Namespace, pipelines: Path
) -> Measured:
    """``dlt_load.py`` into ``url``, with dlt's working directory ``pipelines``: the caller
    empties it before a first pass and keeps it for the second (a deployed pipeline's state)."""
    env = {
        # dlt reports every run to its telemetry endpoint unless told not to.
        "RUNTIME__DLTHUB_TELEMETRY": "false",
        "RUNTIME__LOG_LEVEL": "WARNING",
        "DLT_DATA_DIR": str(workdir / "dlt-data"),
    }
    command = [
        sys.executable,
        str(DLT_SCRIPT),
        "--base-url",
        fake.base_url,
        "--api-key",
        args.api_key,
        "--destination",
        url,
        "--pipelines-dir",
        str(pipelines),
        "--write-disposition",
        args.dlt_write_disposition,
        "--primary-keys" if args.dlt_primary_keys else "--no-primary-keys",
    ]
    return run_measured(
        command,
        {**base_env(), **env},
        workdir,
        workdir / f"{label}.log",
        args.timeout,
        shown_env=env,
    )


def ensure_dlt(databases: Sequence[str]) -> tuple[str | None, str | None]:
    """(dlt's version, None), installing it if missing; or (None, why it cannot be used)."""
    needed = ["dlt", "sqlalchemy", "alembic"]  # the sqlalchemy destination, for SQLite
    if "postgres" in databases:
        needed.append("psycopg2")  # dlt's postgres destination
    if any(importlib.util.find_spec(name) is None for name in needed):
        install = [sys.executable, "-m", "pip", "install", DLT_REQUIREMENT]
        print("dlt not found; installing it:", shlex.join(install), flush=True)
        done = subprocess.run(install, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            return None, f"`{shlex.join(install)}` failed: {' / '.join(lines[-3:])}"
        importlib.invalidate_caches()
    probe = subprocess.run(
        [sys.executable, "-c", "import dlt; print(dlt.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return None, f"dlt does not import: {probe.stderr.strip().splitlines()[-1:]}"
    return probe.stdout.strip(), None


# --- (a) throughput -------------------------------------------------------------------------

PLAIN = "no latency"


@dataclass
class ThroughputRun:
    scenario: str
    database: str
    round: int
    tool: str
    patients: int
    measured: Measured
    rows: int | None
    records_per_s: float | None  # patients / wall time, None when the run failed
    requests: int  # API requests the fake saw during the run
    fake_cpu_s: float
    loadavg: tuple[float, float, float]
    # FIRST_PASS: into the empty database; SECOND_PASS: the same tool again into the same
    # database (and, for dlt, the same pipeline state), nothing changed upstream.
    pass_number: int = FIRST_PASS
    write_disposition: str | None = None  # dlt's, as dlt_load.py reported it
    primary_keys: bool | None = None  # dlt's SQLite tables with their PRIMARY KEY
    sync_run: dict[str, Any] = field(default_factory=dict)
    log_problems: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def cpu_s_per_record(self) -> float | None:
        """The whole process's user + system CPU seconds per patient, None when it failed."""
        return None if self.error else self.measured.cpu_s / self.patients

    @property
    def records_per_cpu_s(self) -> float | None:
        if self.error or self.measured.cpu_s <= 0:
            return None
        return self.patients / self.measured.cpu_s

    @property
    def tool_shown(self) -> str:
        return _tool_name(self.tool, self.write_disposition, self.primary_keys)


def _tool_name(tool: str, disposition: str | None, primary_keys: bool | None) -> str:
    """``dlt (merge, PK)``: dlt with its write disposition, and PK when its SQLite tables have
    their PRIMARY KEY (dlt_load.py's --primary-keys)."""
    if not disposition:
        return tool
    return f"{tool} ({disposition}{', PK' if primary_keys else ''})"


def throughput_scenarios(args: argparse.Namespace) -> list[tuple[str, int, Any]]:
    """(name, patients, latency): one no-latency fake per ``--patients`` size, then the
    latency scenario's."""
    scenarios: list[tuple[str, int, Any]] = []
    if "plain" in args.scenario_list:
        scenarios += [(PLAIN, patients, None) for patients in args.patient_list]
    if "latency" in args.scenario_list:
        scenarios.append((_latency_name(args.latency), args.latency_patients, args.latency))
    return scenarios


def _latency_name(latency: Sequence[float]) -> str:
    return f"latency {latency[0] * 1000:g}-{latency[1] * 1000:g} ms"


def part_throughput(
    args: argparse.Namespace, workdir: Path, dlt_problem: str | None, out: dict[str, Any]
) -> list[ThroughputRun]:
    tools = [t for t in TOOLS if t == "ours" or dlt_problem is None]
    if args.baseline_tree:
        tools.insert(1, BASELINE)
    runs: list[ThroughputRun] = out.setdefault("runs", [])
    for scenario, patients, latency in throughput_scenarios(args):
        tag = f"plain-{patients}" if latency is None else "latency"
        with running_fake(args, workdir, f"a-{tag}", patients=patients, latency=latency) as fake:
            out.setdefault("fake_commands", {})[f"{scenario}, {patients}"] = fake.command
            for kind in args.database_list:
                for round_number in range(1, args.rounds + 1):
                    # ABBA: the order flips each round, so drift hurts neither side. Each
                    # tool's second pass follows its first.
                    order = tools if round_number % 2 else list(reversed(tools))
                    for tool in order:
                        runs += throughput_runs(
                            args, workdir, fake, (scenario, tag), kind, round_number, tool, patients
                        )
    return runs


def throughput_runs(
    args: argparse.Namespace,
    workdir: Path,
    fake: Fake,
    scenario_and_tag: tuple[str, str],
    kind: str,
    round_number: int,
    tool: str,
    patients: int,
) -> list[ThroughputRun]:
    """One tool's first pass into an empty database, then (unless ``--no-second-pass``) its
    second pass into the same database; the database is discarded after."""
    scenario, tag = scenario_and_tag
    label = f"a-{tag}-{kind}-{round_number}-{tool}"
    url = fresh_database(kind, workdir, label, args)
    pipelines = workdir / f"{label}-dlt-pipelines"
    shutil.rmtree(pipelines, ignore_errors=True)
    if tool in OUR_COMMANDS:
        # setup, not timed: dlt creates its tables
        migrate(url, fake.base_url, workdir, args, tool)
    passes = (FIRST_PASS, SECOND_PASS) if args.second_pass else (FIRST_PASS,)
    runs: list[ThroughputRun] = []
    try:
        for pass_number in passes:
            run = throughput_pass(
                args,
                workdir,
                fake,
                (scenario, kind, round_number, tool, patients, pass_number),
                url,
                label if pass_number == FIRST_PASS else f"{label}-second",
                pipelines,
            )
            runs.append(run)
            _print_throughput_run(run)
            if run.error:
                break  # a second pass over a failed first measures nothing steady
    finally:
        discard_database(kind, url, args)
        if not args.keep_workdir:
            shutil.rmtree(pipelines, ignore_errors=True)
    return runs


def throughput_pass(
    args: argparse.Namespace,
    workdir: Path,
    fake: Fake,
    what: tuple[str, str, int, str, int, int],
    url: str,
    label: str,
    pipelines: Path,
) -> ThroughputRun:
    scenario, kind, round_number, tool, patients, pass_number = what
    stats_before, cpu_before = fake.stats(), fake.cpu_s()
    loadavg = os.getloadavg()
    disposition, primary_keys = None, None
    if tool in OUR_COMMANDS:
        measured = run_ours(url, fake, workdir, label, args, tool)
        table = "patients"
    else:
        # sqlite:///<file> goes to dlt's sqlalchemy destination, postgresql:// to postgres.
        measured = run_dlt(url, fake, workdir, label, args, pipelines)
        result = measured.result or {}
        dataset = result.get("dataset", "main" if kind == "sqlite" else "")
        table = "patients" if kind == "sqlite" and dataset == "main" else f"{dataset}.patients"
        disposition = str(result.get("write_disposition") or args.dlt_write_disposition)
        primary_keys = result.get("primary_keys")
    fake_cpu = fake.cpu_s() - cpu_before
    requests = fake.stats()["requests"] - stats_before["requests"]
    rows = count_rows(kind, url, table)
    sync_run = last_sync_run(kind, url) if tool in OUR_COMMANDS and rows is not None else {}
    # Append (dlt's default, not a mirror's) adds every record again on the second pass.
    expected = patients * (pass_number if disposition == "append" else 1)
    error = None
    if measured.returncode != 0 or measured.timed_out:
        why = "timed out" if measured.timed_out else f"exited with {measured.returncode}"
        error = f"{tool} {why}: {measured.stdout_tail[-600:]}"
    elif rows != expected:
        error = f"{tool} stored {rows} rows for {patients} patients (expected {expected})"
    return ThroughputRun(
        scenario=scenario,
        database=kind,
        round=round_number,
        tool=tool,
        patients=patients,
        measured=measured,
        rows=rows,
        records_per_s=None if error else patients / measured.wall_s,
        requests=requests,
        fake_cpu_s=fake_cpu,
        loadavg=loadavg,
        pass_number=pass_number,
        write_disposition=disposition,
        primary_keys=primary_keys,
        sync_run=sync_run,
        log_problems=_log_problems(workdir / f"{label}.log"),
        error=error,
    )


def _print_throughput_run(run: ThroughputRun) -> None:
    rate = "FAILED" if run.records_per_s is None else f"{run.records_per_s:.0f} records/s"
    which = "first pass" if run.pass_number == FIRST_PASS else "second pass"
    print(
        f"(a) {run.scenario}, {run.patients}, {run.database}, round {run.round}, "
        f"{run.tool_shown}, {which}: {rate} ({run.patients} in {run.measured.wall_s:.2f} s, "
        f"CPU {run.measured.cpu_s:.2f} s, {run.requests} requests)",
        flush=True,
    )
    if run.error:
        print(f"  {run.error[:400]}", flush=True)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _round_ratios(
    ok: Sequence[ThroughputRun], other: dict[int, float | None], value: str
) -> list[float]:
    """Each round's ``value`` of ``ok`` over ``other``'s (by round), where both exist."""
    ratios = []
    for run in ok:
        mine, theirs = getattr(run, value), other.get(run.round)
        if mine is not None and theirs:
            ratios.append(mine / theirs)
    return ratios


def summarize_throughput(runs: Sequence[ThroughputRun]) -> list[dict[str, Any]]:
    rows = []
    keys = dict.fromkeys((r.scenario, r.patients, r.database, r.pass_number) for r in runs)
    for scenario, patients, kind, pass_number in keys:
        mine = [
            r
            for r in runs
            if (r.scenario, r.patients, r.database, r.pass_number)
            == (scenario, patients, kind, pass_number)
        ]
        dlt_rate = {r.round: r.records_per_s for r in mine if r.tool == "dlt"}
        dlt_cpu = {r.round: r.cpu_s_per_record for r in mine if r.tool == "dlt"}
        baseline_rate = {r.round: r.records_per_s for r in mine if r.tool == BASELINE}
        for tool in (*TOOLS, BASELINE):
            tool_runs = [r for r in mine if r.tool == tool]
            if not tool_runs:
                continue
            ok = [r for r in tool_runs if r.error is None]
            ours_like = tool in OUR_COMMANDS
            ratios = _round_ratios(ok, dlt_rate, "records_per_s")
            cpu_ratios = _round_ratios(ok, dlt_cpu, "cpu_s_per_record")
            against_baseline = _round_ratios(ok, baseline_rate, "records_per_s")
            rows.append(
                {
                    "scenario": scenario,
                    "database": kind,
                    "tool": tool,
                    "pass": pass_number,
                    "write_disposition": next(
                        (r.write_disposition for r in tool_runs if r.write_disposition), None
                    ),
                    "primary_keys": next(
                        (r.primary_keys for r in tool_runs if r.primary_keys is not None), None
                    ),
                    "patients": patients,
                    "rounds": len(tool_runs),
                    "failed": len(tool_runs) - len(ok),
                    "median_records_per_s": _median([r.records_per_s or 0.0 for r in ok]),
                    "median_wall_s": _median([r.measured.wall_s for r in ok]),
                    "median_pass_s": _median(
                        [r.sync_run["pass_s"] for r in ok if r.sync_run.get("pass_s")]
                    ),
                    "median_cpu_s": _median([r.measured.cpu_s for r in ok]),
                    "median_cpu_s_per_record": _median(
                        [r.cpu_s_per_record for r in ok if r.cpu_s_per_record is not None]
                    ),
                    "median_records_per_cpu_s": _median(
                        [r.records_per_cpu_s for r in ok if r.records_per_cpu_s is not None]
                    ),
                    "median_requests": _median([float(r.requests) for r in ok]),
                    # ours/dlt records/s: the same, round by round, as dlt wall / ours wall.
                    "ratio": _median(ratios) if ours_like and ratios else None,
                    "cpu_ratio": _median(cpu_ratios) if ours_like and cpu_ratios else None,
                    "vs_baseline": (
                        _median(against_baseline) if tool == "ours" and against_baseline else None
                    ),
                    "log_problems": sum(len(r.log_problems) for r in tool_runs),
                }
            )
    return rows


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _fmt_x(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}x"


def _micro(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e6


def _table(header: Sequence[str], align: str, body: Sequence[Sequence[object]]) -> list[str]:
    """Markdown table lines; ``align`` has one letter per column, l or r."""
    rule = ["---:" if a == "r" else "---" for a in align]
    lines: list[Sequence[object]] = [header, rule, *body]
    return ["| " + " | ".join(str(cell) for cell in line) + " |" for line in lines]


def _shown_tool(row: dict[str, Any]) -> str:
    return _tool_name(row["tool"], row.get("write_disposition"), row.get("primary_keys"))


def report_throughput(
    runs: Sequence[ThroughputRun], rows: Sequence[dict[str, Any]], dlt_problem: str | None
) -> str:
    lines = ["### (a) Records per second, ours against dlt's rest_api source", ""]
    dispositions = sorted({r["write_disposition"] for r in rows if r["write_disposition"]})
    if dispositions:
        keys = {r["primary_keys"] for r in rows if r["tool"] == "dlt" and r["database"] == "sqlite"}
        sqlite_keys = (
            ""
            if not keys
            else " On SQLite its tables have their PRIMARY KEY (PK: create_primary_keys=True)."
            if keys == {True}
            else " On SQLite its tables have no PRIMARY KEY (dlt's default): its merge is "
            "quadratic in the rows."
        )
        lines += [
            f"dlt: rest_api source, write_disposition={'/'.join(dispositions)}, "
            f"primary_key id.{sqlite_keys} CPU = user + system seconds of the tool's own "
            "process, start-up included; the ours/dlt ratios are medians of each round's ratio "
            "(ours/dlt records/s is, round by round, dlt wall / ours wall).",
            "",
        ]
    first = [r for r in rows if r["pass"] == FIRST_PASS]
    second = [r for r in rows if r["pass"] == SECOND_PASS]
    body = [
        [
            *_run_columns(r),
            _fmt(r["median_records_per_s"], 0),
            _fmt(r["median_wall_s"]),
            _fmt(r["median_pass_s"]),
            _fmt(r["median_cpu_s"]),
            _fmt(_micro(r["median_cpu_s_per_record"]), 1),
            _fmt(r["median_requests"], 0),
            _fmt_x(r["ratio"]),
            _fmt_x(r["cpu_ratio"]),
            _fmt_x(r.get("vs_baseline")),
        ]
        for r in first
    ]
    header = [
        "fake",
        "database",
        "patients",
        "tool",
        "ok runs",
        "median records/s",
        "median wall (s)",
        "median pass (s)",
        "median CPU (s)",
        "CPU per record (µs)",
        "requests",
        "ours/dlt records/s (dlt wall/ours wall)",
        "ours/dlt CPU per record",
        "ours/baseline",
    ]
    lines += ["First pass, into an empty database:", ""]
    lines += [*_table(header, "llrlrrrrrrrrrr", body), ""]
    if dlt_problem:
        lines.append(f"- dlt NOT RUN: {dlt_problem}. Ours alone; no ratio.")
    for r in first:
        if r["tool"] != "ours":
            continue
        where = f"{r['scenario']}, {r['patients']}, {r['database']}"
        lines.append(
            f"- goal ({where}): ours >= {GOAL_THROUGHPUT_RATIO:g}x dlt's records/s: "
            + _verdict(r["ratio"], GOAL_THROUGHPUT_RATIO, at_least=True)
        )
        if r["scenario"] == PLAIN:
            lines.append(
                f"- goal ({where}): CPU per record ours/dlt <= {GOAL_CPU_PER_RECORD_RATIO:g}: "
                + _verdict(r["cpu_ratio"], GOAL_CPU_PER_RECORD_RATIO, at_least=False)
            )
        else:
            lines.append(
                f"- goal ({where}): dlt wall / ours wall >= {GOAL_LATENCY_WALL_RATIO:g}: "
                + _verdict(r["ratio"], GOAL_LATENCY_WALL_RATIO, at_least=True)
            )
    if second:
        lines += ["", *_report_second_pass(second)]
    for r in rows:
        which = f"{r['scenario']}/{r['patients']}/{r['database']}/{r['tool']}/pass {r['pass']}"
        if r["failed"]:
            lines.append(
                f"- FAILED {which}: {r['failed']} run(s) "
                "(see the per-round table and the JSON results)"
            )
        if r["log_problems"]:
            lines.append(
                f"- NOTE {which}: {r['log_problems']} "
                "warning/error line(s) in the command logs (log_problems in the JSON results)"
            )
    per_round = [
        [
            r.scenario,
            r.patients,
            r.database,
            r.round,
            r.tool_shown,
            r.pass_number,
            _fmt(r.measured.wall_s),
            "FAILED" if r.records_per_s is None else _fmt(r.records_per_s, 0),
            "-" if r.rows is None else r.rows,
            r.requests,
            _fmt(r.measured.cpu_s),
            _fmt(_micro(r.cpu_s_per_record), 1),
            _fmt(r.records_per_cpu_s, 0),
            _fmt(r.fake_cpu_s),
            _fmt(r.measured.max_rss_kib / 1024, 0),
        ]
        for r in runs
    ]
    header = [
        "fake",
        "patients",
        "database",
        "round",
        "tool",
        "pass",
        "wall (s)",
        "records/s",
        "rows",
        "requests",
        "CPU (s)",
        "CPU per record (µs)",
        "records per CPU-s",
        "fake CPU (s)",
        "peak RSS (MiB)",
    ]
    lines += ["", *_table(header, "lrlrlrrrrrrrrrr", per_round)]
    return "\n".join(lines)


def _verdict(value: float | None, goal: float, *, at_least: bool) -> str:
    if value is None or math.isnan(value):
        return "no ratio (dlt did not run or failed)"
    met = value >= goal if at_least else value <= goal
    return f"{'ok' if met else 'MISSED'} ({value:.2f}x)"


def _run_columns(row: dict[str, Any]) -> list[object]:
    """What the throughput tables start each row with: which runs it is, and how many ran."""
    return [row["scenario"], row["database"], row["patients"], _shown_tool(row),
            row["rounds"] - row["failed"]]  # fmt: skip


def _report_second_pass(second: Sequence[dict[str, Any]]) -> list[str]:
    """The steady state: each tool again into the database its first pass filled."""
    lines = [
        "Second pass, the same tool again into the same database, nothing changed upstream:",
        "",
    ]
    body = [
        [
            *_run_columns(r),
            _fmt(r["median_wall_s"]),
            _fmt(r["median_pass_s"]),
            _fmt(r["median_cpu_s"]),
            _fmt(r["median_records_per_cpu_s"], 0),
            _fmt(r["median_records_per_s"], 0),
            _fmt(r["median_requests"], 0),
        ]
        for r in second
    ]
    header = [
        "fake",
        "database",
        "patients",
        "tool",
        "ok runs",
        "median wall (s)",
        "median pass (s)",
        "median CPU (s)",
        "records per CPU-s",
        "records/s",
        "requests",
    ]
    lines += [*_table(header, "llrlrrrrrrr", body), ""]
    # The goal is at GOAL_STEADY_PATIENTS; a run without that size is judged at its largest
    # no-latency size, and says so.
    for kind in dict.fromkeys(r["database"] for r in second):
        ours = [r for r in second if r["tool"] == "ours" and r["scenario"] == PLAIN]
        ours = [r for r in ours if r["database"] == kind]
        if not ours:
            continue
        at_goal = [r for r in ours if r["patients"] == GOAL_STEADY_PATIENTS]
        r = at_goal[0] if at_goal else max(ours, key=lambda row: row["patients"])
        value = r["median_records_per_cpu_s"]
        if math.isnan(value):
            verdict = "every run FAILED"
        else:
            met = "ok" if value >= GOAL_STEADY_RECORDS_PER_CPU_S else "MISSED"
            verdict = f"{met} ({value:,.0f})"
        if not at_goal:
            verdict = f"no {GOAL_STEADY_PATIENTS}-patient run; at {r['patients']}: {verdict}"
        lines.append(
            f"- goal ({PLAIN}, {kind}): ours' second pass at {GOAL_STEADY_PATIENTS} patients >= "
            f"{GOAL_STEADY_RECORDS_PER_CPU_S:,} records per CPU-second: {verdict}"
        )
    return lines


# --- (b) rate limit -------------------------------------------------------------------------


@dataclass
class RateLimitRun:
    scenario: str
    round: int
    patients: int
    pages: int
    limit: int
    window_s: int
    reserve: float
    theoretical_min_s: float
    startup_s: float | None  # from launching the command to the pass's start
    first_phase_s: float | None  # where in the fake's window the pass started
    measured: Measured
    requests: int  # as the fake counted them
    rate_limited: int  # 429s the fake answered
    sync_run: dict[str, Any]
    rows: int | None
    log_problems: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ratio(self) -> float:
        return self.measured.wall_s / self.theoretical_min_s


def usable_per_second(limit: int, window_s: float, reserve: float) -> float:
    return limit * (1 - reserve) / window_s


# The pass should start this long after a window begins: late enough that start-up jitter
# does not land its first requests in the end of the previous window (whose whole budget the
# pacer would then spend in a moment), early enough to leave the window nearly whole.
_FIRST_REQUEST_MARGIN_S = 0.1


def startup_probe(args: argparse.Namespace, workdir: Path, label: str) -> float:
    """Seconds from launching ``sync patients`` to its pass's start, measured on a port where
    nothing listens (so it ends at once, and spends none of the fake's rate limit)."""
    port = args.port + 1
    if not port_is_free(args.host, port):
        return 1.0
    url = fresh_database("sqlite", workdir, label, args)
    base_url = f"http://{args.host}:{port}"
    migrate(url, base_url, workdir, args)
    env = {**base_env(), **ours_env(url, base_url, args), "HEALTHDOCK_API_ATTEMPTS": "1"}
    launched = time.time()
    subprocess.run(
        [str(BIN / "healthdock-mirror"), "sync", "patients"],
        env=env,
        cwd=workdir,
        capture_output=True,
        check=False,
        timeout=120,
    )
    started = last_sync_run("sqlite", url).get("started_epoch")
    discard_database("sqlite", url, args)
    return 1.0 if started is None else started - launched


def launch_for_window(window_s: int, startup_s: float) -> float:
    """Sleep until the moment to launch so that the pass starts just after one of the fake's
    windows begins (they are aligned to the epoch); return that moment (epoch seconds).

    Then the first window is whole, as in the steady state the minimum assumes: a pass that
    started late in a window would get that window's share in less time and beat it."""
    now = time.time()
    lead = startup_s - _FIRST_REQUEST_MARGIN_S
    boundary = (math.floor((now + lead) / window_s) + 1) * window_s
    time.sleep(max(0.0, boundary - lead - now))
    return time.time()


def _phase(epoch: float, window_s: int) -> float:
    """Seconds after the start of its window; just before the next one shows as negative."""
    phase = epoch % window_s
    return phase - window_s if phase > window_s / 2 else phase


def part_ratelimit(
    args: argparse.Namespace, workdir: Path, out: dict[str, Any]
) -> list[RateLimitRun]:
    runs: list[RateLimitRun] = out.setdefault("runs", [])
    pages = math.ceil(args.rl_patients / PAGE_SIZE)
    minimum = pages / usable_per_second(args.rl_limit, args.rl_window, args.reserve)
    scenarios: list[tuple[str, Any]] = []
    if "plain" in args.scenario_list:
        scenarios.append(("no latency", None))
    if "latency" in args.scenario_list:
        scenarios.append((_latency_name(args.latency), args.latency))
    for scenario, latency in scenarios:
        tag = "plain" if latency is None else "latency"
        with running_fake(
            args,
            workdir,
            f"b-{tag}",
            patients=args.rl_patients,
            latency=latency,
            rate_limit=args.rl_limit,
            window_s=args.rl_window,
        ) as fake:
            out.setdefault("fake_commands", {})[scenario] = fake.command
            startups = [startup_probe(args, workdir, f"b-{tag}-probe")]
            for round_number in range(1, args.rl_rounds + 1):
                label = f"b-{tag}-{round_number}"
                url = fresh_database("sqlite", workdir, label, args)
                migrate(url, fake.base_url, workdir, args)
                stats_before = fake.stats()
                launched = launch_for_window(args.rl_window, _median(startups))
                measured = run_ours(url, fake, workdir, label, args)
                stats = fake.stats()
                rows = count_rows("sqlite", url, "patients")
                sync_run = last_sync_run("sqlite", url) if rows is not None else {}
                first = sync_run.get("started_epoch")
                if first is not None:
                    startups.append(first - launched)
                run = RateLimitRun(
                    scenario=scenario,
                    round=round_number,
                    patients=args.rl_patients,
                    pages=pages,
                    limit=args.rl_limit,
                    window_s=args.rl_window,
                    reserve=args.reserve,
                    theoretical_min_s=minimum,
                    startup_s=None if first is None else first - launched,
                    first_phase_s=None if first is None else _phase(first, args.rl_window),
                    measured=measured,
                    requests=stats["requests"] - stats_before["requests"],
                    rate_limited=stats["rate_limited"] - stats_before["rate_limited"],
                    sync_run=sync_run,
                    rows=rows,
                    log_problems=_log_problems(workdir / f"{label}.log"),
                )
                if measured.returncode != 0 or measured.timed_out:
                    run.error = f"exited with {measured.returncode}: {measured.stdout_tail[-600:]}"
                elif rows != args.rl_patients:
                    run.error = f"stored {rows} of {args.rl_patients} patients"
                discard_database("sqlite", url, args)
                runs.append(run)
                print(
                    f"(b) {scenario}, round {round_number}: {measured.wall_s:.2f} s against a "
                    f"minimum of {minimum:.2f} s ({run.ratio:.3f}x), {run.requests} requests, "
                    f"{run.rate_limited} 429s" + (f"; {run.error[:300]}" if run.error else ""),
                    flush=True,
                )
    return runs


def report_ratelimit(runs: Sequence[RateLimitRun]) -> str:
    lines = ["### (b) A reconcile under a rate limit against the theoretical minimum", ""]
    if not runs:
        return "\n".join([*lines, "(no run)"])
    first = runs[0]
    rate = usable_per_second(first.limit, first.window_s, first.reserve)
    lines += [
        f"Limit {first.limit} requests per {first.window_s} s window, reserve "
        f"{first.reserve:g}: {first.limit * (1 - first.reserve):g} usable per window = "
        f"{rate:.2f} requests/s. {first.patients} patients = {first.pages} pages: theoretical "
        f"minimum {first.pages} / {rate:.2f} = {first.theoretical_min_s:.2f} s. Each command is "
        "launched so that its pass starts just after one of the fake's windows begins; wall is "
        "the whole command (start-up included), pass is sync_runs' started_at to finished_at.",
        "",
    ]
    body = []
    for scenario in dict.fromkeys(r.scenario for r in runs):
        mine = [r for r in runs if r.scenario == scenario]
        ok = [r for r in mine if r.error is None]
        passes = [r.sync_run["pass_s"] for r in ok if r.sync_run.get("pass_s")]
        body.append(
            [
                scenario,
                f"{len(ok)}/{len(mine)}",
                _fmt(first.theoretical_min_s),
                _fmt(_median([r.measured.wall_s for r in ok])),
                _fmt(_median([r.ratio for r in ok]), 3),
                _fmt(max((r.ratio for r in ok), default=None), 3),
                _fmt(_median(passes)),
                _fmt(_median([p / first.theoretical_min_s for p in passes]), 3),
                sum(r.requests for r in mine),
                sum(r.rate_limited for r in mine),
                sum(int(r.sync_run.get("rate_limited") or 0) for r in mine),
            ]
        )
    header = [
        "fake",
        "ok runs",
        "minimum (s)",
        "median wall (s)",
        "median wall/min",
        "worst wall/min",
        "median pass (s)",
        "median pass/min",
        "requests (all runs)",
        "429s (fake)",
        "429s (sync_runs)",
    ]
    lines += [*_table(header, "lrrrrrrrrrr", body), ""]
    for scenario in dict.fromkeys(r.scenario for r in runs):
        mine = [r for r in runs if r.scenario == scenario]
        ok = [r for r in mine if r.error is None]
        if not ok:
            lines.append(f"- goal ({scenario}): every run FAILED")
            continue
        ratio = _median([r.ratio for r in ok])
        limited = sum(r.rate_limited for r in mine)
        within = "ok" if ratio <= GOAL_RATELIMIT_SLACK else "MISSED"
        zero = "ok" if limited == 0 else f"MISSED ({limited})"
        lines.append(
            f"- goal ({scenario}): wall time within {GOAL_RATELIMIT_SLACK - 1:.0%} of the "
            f"minimum: {within} ({ratio:.3f}x); zero 429s: {zero}"
        )
        extra = [r for r in mine if r.requests != r.pages]
        if extra:
            lines.append(
                f"- NOTE ({scenario}): {len(extra)} run(s) made more requests than pages "
                "(retries or sweep look-ups; see the per-round table)"
            )
    per_round = [
        [
            r.scenario,
            r.round,
            _fmt(r.startup_s),
            _fmt(r.first_phase_s, 3),
            _fmt(r.measured.wall_s),
            _fmt(r.ratio, 3),
            _fmt(r.sync_run.get("pass_s")),
            r.requests,
            r.sync_run.get("requests", "-"),
            r.rate_limited,
            r.sync_run.get("outcome", "-") if r.error is None else "FAILED",
        ]
        for r in runs
    ]
    header = [
        "fake",
        "round",
        "start-up (s)",
        "pass start in window (s)",
        "wall (s)",
        "wall/min",
        "pass (s)",
        "requests (fake)",
        "requests (sync_runs)",
        "429s (fake)",
        "outcome",
    ]
    lines += ["", *_table(header, "lrrrrrrrrrl", per_round)]
    return "\n".join(lines)


# --- (c) memory -----------------------------------------------------------------------------


@dataclass
class MemoryRun:
    patients: int
    round: int
    measured: Measured
    rows: int | None
    sync_run: dict[str, Any]
    log_problems: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def peak_mib(self) -> float:
        return self.measured.max_rss_kib / 1024


def part_memory(args: argparse.Namespace, workdir: Path, out: dict[str, Any]) -> list[MemoryRun]:
    runs: list[MemoryRun] = out.setdefault("runs", [])
    for patients in args.mem_size_list:
        # The fake serves from a process of its own, so its memory is not in the measurement.
        with running_fake(args, workdir, f"c-{patients}", patients=patients) as fake:
            out.setdefault("fake_commands", {})[str(patients)] = fake.command
            for round_number in range(1, args.mem_rounds + 1):
                label = f"c-{patients}-{round_number}"
                url = fresh_database("sqlite", workdir, label, args)
                migrate(url, fake.base_url, workdir, args)
                measured = run_ours(url, fake, workdir, label, args, sample_every_s=0.25)
                rows = count_rows("sqlite", url, "patients")
                run = MemoryRun(
                    patients=patients,
                    round=round_number,
                    measured=measured,
                    rows=rows,
                    sync_run=last_sync_run("sqlite", url) if rows is not None else {},
                    log_problems=_log_problems(workdir / f"{label}.log"),
                )
                if measured.returncode != 0 or measured.timed_out:
                    run.error = f"exited with {measured.returncode}: {measured.stdout_tail[-600:]}"
                elif rows != patients:
                    run.error = f"stored {rows} of {patients} patients"
                discard_database("sqlite", url, args)
                runs.append(run)
                print(
                    f"(c) {patients} patients, round {round_number}: peak RSS "
                    f"{run.peak_mib:.1f} MiB in {measured.wall_s:.2f} s"
                    + (f"; {run.error[:300]}" if run.error else ""),
                    flush=True,
                )
    return runs


def _rss_at(samples: Sequence[Sequence[float]], share: float) -> float | None:
    """VmRSS (MiB) at ``share`` of the run's sampled duration."""
    if not samples:
        return None
    end = samples[-1][0]
    return next((rss for t, rss in samples if t >= share * end), samples[-1][1]) / 1024


def report_memory(runs: Sequence[MemoryRun]) -> str:
    lines = ["### (c) Peak memory of a reconcile (SQLite)", ""]
    if not runs:
        return "\n".join([*lines, "(no run)"])
    peaks: dict[int, float] = {}
    for patients in dict.fromkeys(r.patients for r in runs):
        peaks[patients] = _median(
            [r.peak_mib for r in runs if r.patients == patients and not r.error]
        )
    smallest = min(peaks)
    body = []
    for patients in peaks:
        mine = [r for r in runs if r.patients == patients]
        ok = [r for r in mine if r.error is None]
        hwm = [r.measured.hwm_kib / 1024 for r in ok if r.measured.hwm_kib]
        body.append(
            [
                patients,
                f"{len(ok)}/{len(mine)}",
                _fmt(peaks[patients], 1),
                _fmt_x(peaks[patients] / peaks[smallest]),
                _fmt(_median(hwm), 1),
                _fmt(_median([_rss_at(r.measured.rss_samples, 0.5) or 0.0 for r in ok]), 1),
                _fmt(_median([r.measured.wall_s for r in ok])),
                _fmt(_median([patients / r.measured.wall_s for r in ok]), 0),
            ]
        )
    header = [
        "patients",
        "ok runs",
        "median peak RSS (MiB)",
        f"peak / peak at {smallest}",
        "VmHWM last seen (MiB)",
        "RSS at half time (MiB)",
        "median wall (s)",
        "records/s",
    ]
    lines += [*_table(header, "rrrrrrrr", body), ""]
    sizes = sorted(peaks)
    if len(sizes) >= 2 and not math.isnan(peaks[sizes[0]]) and not math.isnan(peaks[sizes[-1]]):
        for size in sizes[1:-1]:  # the sizes between, 200,000 by default: reported, not judged
            lines.append(
                f"- peak RSS at {size} patients / at {sizes[0]}: "
                f"{_fmt_x(peaks[size] / peaks[sizes[0]])}"
            )
        ratio = peaks[sizes[-1]] / peaks[sizes[0]]
        met = "ok" if ratio <= GOAL_MEMORY_RATIO else "MISSED"
        lines.append(
            f"- goal (flat): peak RSS at {sizes[-1]} patients <= {GOAL_MEMORY_RATIO:g}x that at "
            f"{sizes[0]}: {met} ({ratio:.2f}x)"
        )
    for r in runs:
        if r.error:
            lines.append(f"- FAILED {r.patients} round {r.round}: {r.error[:300]}")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sync.run",
        description="Reconcile throughput against dlt, under a rate limit, and its peak memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "parts",
        nargs="*",
        default=list(PARTS),
        help="which parts: throughput (a), ratelimit (b), memory (c)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes and one round each, to check that everything runs (numbers mean little)",
    )
    parser.add_argument(
        "--scenarios",
        default="plain,latency",
        help="fakes for (a) and (b): plain (no latency) and/or latency (see --latency)",
    )
    parser.add_argument(
        "--latency",
        nargs=2,
        type=float,
        default=(0.05, 0.15),
        metavar=("MIN", "MAX"),
        help="seconds the fake adds per request in the latency scenario",
    )
    group = parser.add_argument_group("(a) throughput")
    group.add_argument(
        "--databases", default="sqlite,postgres", help="comma-separated: sqlite, postgres"
    )
    group.add_argument("--rounds", type=int, default=5, help="ours/dlt pairs per database and fake")
    group.add_argument(
        "--patients",
        default="20000,200000",
        help="comma-separated patients, no latency: one fake, and its rounds, per size",
    )
    group.add_argument(
        "--latency-patients", type=int, default=20_000, help="patients, latency scenario"
    )
    group.add_argument(
        "--no-second-pass",
        dest="second_pass",
        action="store_false",
        help="skip each tool's second pass (again into the database its first pass filled, "
        "nothing changed upstream: the steady state)",
    )
    group.add_argument("--no-dlt", action="store_true", help="run ours alone")
    group.add_argument(
        "--dlt-write-disposition",
        choices=DLT_WRITE_DISPOSITIONS,
        default="merge",
        help="dlt_load.py's --write-disposition: merge on primary key id (what a mirror "
        "needs) or dlt's default append (its second pass then stores every record twice)",
    )
    group.add_argument(
        "--dlt-primary-keys",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="dlt_load.py's --primary-keys: dlt's SQLite tables get their PRIMARY KEY, without "
        "which (dlt's default) its merge is quadratic in the rows",
    )
    group.add_argument(
        "--baseline-tree",
        metavar="DIR",
        help="also run our command from this checkout (say `git worktree add DIR <commit>`) in "
        "every round, and report ours/baseline",
    )
    group = parser.add_argument_group("(b) rate limit")
    group.add_argument("--rl-patients", type=int, default=10_000, help="patients (100 a page)")
    group.add_argument("--rl-limit", type=int, default=60, help="requests per window")
    group.add_argument(
        "--rl-window", type=int, default=10, help="window in whole seconds (as HealthDock's reset)"
    )
    group.add_argument("--rl-rounds", type=int, default=3, help="runs per scenario")
    group = parser.add_argument_group("(c) memory")
    group.add_argument(
        "--mem-sizes",
        default="10000,200000,1000000",
        help="comma-separated patients; the goal compares the largest with the smallest",
    )
    group.add_argument("--mem-rounds", type=int, default=1, help="runs per size")
    group = parser.add_argument_group("ours")
    group.add_argument(
        "--concurrency", type=int, default=16, help="HEALTHDOCK_SYNC_CONCURRENCY (16: the default)"
    )
    group.add_argument("--reserve", type=float, default=0.2, help="HEALTHDOCK_SYNC_RATE_RESERVE")
    group = parser.add_argument_group("setup")
    group.add_argument("--host", default="127.0.0.1")
    group.add_argument("--port", type=int, default=8251, help="the fake's port")
    group.add_argument("--api-key", default="fake-api-key")
    group.add_argument("--seed", type=int, default=1, help="the fake's seed")
    group.add_argument(
        "--timeout", type=float, default=600, help="seconds before a command is killed"
    )
    group.add_argument(
        "--pg-admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL URL allowed to drop and create --pg-database",
    )
    group.add_argument(
        "--pg-database", default="bench_sync", help="throwaway database, recreated for each run"
    )
    group.add_argument(
        "--workdir", type=Path, help="where SQLite files and logs go (default: a temp dir)"
    )
    group.add_argument(
        "--keep-workdir", action="store_true", help="keep the work dir (logs, databases) afterwards"
    )
    group.add_argument(
        "--results", type=Path, default=RESULTS, help="directory for the JSON results"
    )
    args = parser.parse_args(argv)
    parts = [PART_ALIASES.get(p, p) for p in args.parts]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}; use {', '.join(PARTS)}")
    args.parts = [p for p in PARTS if p in parts]
    if args.smoke:
        args.patients, args.latency_patients, args.rounds = "500,1000", 300, 1
        args.rl_patients, args.rl_limit, args.rl_window, args.rl_rounds = 1_000, 10, 2, 1
        args.mem_sizes, args.mem_rounds = "500,2000", 1
    args.database_list = [d.strip() for d in args.databases.split(",") if d.strip()]
    if set(args.database_list) - {"sqlite", "postgres"} or not args.database_list:
        parser.error("--databases: use sqlite and/or postgres")
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if set(args.scenario_list) - {"plain", "latency"} or not args.scenario_list:
        parser.error("--scenarios: use plain and/or latency")
    args.patient_list = _sizes(parser, "--patients", args.patients)
    args.mem_size_list = _sizes(parser, "--mem-sizes", args.mem_sizes)
    if min(args.rounds, args.rl_rounds, args.mem_rounds, args.rl_limit, args.rl_window) < 1:
        parser.error("rounds, --rl-limit and --rl-window must be at least 1")
    if not 0 <= args.reserve < 1:
        parser.error("--reserve must be in [0, 1)")
    if args.rl_limit * (1 - args.reserve) < 1:
        parser.error("--rl-limit leaves no request per window after --reserve")
    return args


def _sizes(parser: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        parser.error(f"{flag}: comma-separated whole numbers, e.g. 20000,200000")
    if not sizes or min(sizes) < 1:
        parser.error(f"{flag}: at least one size, each at least 1")
    return list(dict.fromkeys(sizes))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    unwind_on_signals()
    command_line = shlex.join(
        [sys.executable, "-m", "bench.sync.run", *(argv if argv is not None else sys.argv[1:])]
    )
    environment: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
    }
    # Every pass is a new process: measure the code as installed, its bytecode cached.
    compile_bytecode(HERE.parent.parent)
    if args.baseline_tree:
        compile_bytecode(Path(args.baseline_tree).resolve())
    environment["bytecode"] = "cached (compileall) for every tree"
    dlt_problem: str | None = None
    if "throughput" in args.parts:
        if args.no_dlt:
            dlt_problem = "--no-dlt was given"
        else:
            version, dlt_problem = ensure_dlt(args.database_list)
            environment["dlt"] = version
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-sync-"))
    workdir.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, dict[str, Any]] = {part: {} for part in args.parts}
    interrupted = False
    failure: str | None = None
    uses_pg = "throughput" in args.parts and "postgres" in args.database_list
    try:
        if uses_pg:
            environment["postgres"] = pg_settings(args.pg_admin_url)
        if "throughput" in args.parts:
            part_throughput(args, workdir, dlt_problem, outputs["throughput"])
        if "ratelimit" in args.parts:
            part_ratelimit(args, workdir, outputs["ratelimit"])
        if "memory" in args.parts:
            part_memory(args, workdir, outputs["memory"])
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; reporting the runs that finished", file=sys.stderr)
    except (BenchError, psycopg.Error) as error:
        failure = str(error)
        print(f"\nbenchmark stopped: {failure}", file=sys.stderr)
    finally:
        if uses_pg:
            with suppress(psycopg.Error):
                drop_pg_database(args.pg_admin_url, args.pg_database)
        if not args.keep_workdir and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    sections = [f"Command: `{command_line}`"]
    summary: dict[str, Any] = {}
    if "throughput" in outputs:
        runs = outputs["throughput"].get("runs", [])
        summary["throughput"] = summarize_throughput(runs)
        sections.append(report_throughput(runs, summary["throughput"], dlt_problem))
        sections.append(_commands_used(runs, outputs["throughput"]))
    if "ratelimit" in outputs:
        runs = outputs["ratelimit"].get("runs", [])
        sections.append(report_ratelimit(runs))
        sections.append(_commands_used(runs, outputs["ratelimit"]))
    if "memory" in outputs:
        runs = outputs["memory"].get("runs", [])
        sections.append(report_memory(runs))
        sections.append(_commands_used(runs, outputs["memory"]))
    report = "\n\n".join(sections)
    print()
    print(report)

    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.results / f"sync-{stamp}.json"
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    raw = {
        part: {
            **{k: v for k, v in data.items() if k != "runs"},
            "runs": [_run_dict(r) for r in data.get("runs", [])],
        }
        for part, data in outputs.items()
    }
    out.write_text(
        json.dumps(
            {
                "command": command_line,
                "settings": settings,
                "environment": environment,
                "dlt_problem": dlt_problem,
                "interrupted": interrupted,
                "failure": failure,
                "summary": summary,
                "parts": raw,
                "report": report,
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    print(f"\nraw results: {out}")
    if interrupted:
        return 130
    return 1 if failure else 0


def _run_dict(run: Any) -> dict[str, Any]:
    data = asdict(run)
    for name in ("ratio", "cpu_s_per_record", "records_per_cpu_s"):
        if hasattr(run, name):
            data[name] = getattr(run, name)
    return data


def _commands_used(runs: Sequence[Any], output: dict[str, Any]) -> str:
    """One example of each command a part ran (the paths are those of its first run)."""
    lines = [
        f"- fake ({name}): `{command}`" for name, command in output.get("fake_commands", {}).items()
    ]
    seen: dict[str, str] = {}
    for run in runs:
        seen.setdefault(getattr(run, "tool", "ours"), run.measured.command)
    lines += [f"- {tool}: `{command}`" for tool, command in seen.items()]
    return "Commands:\n\n" + "\n".join(lines) if lines else ""


if __name__ == "__main__":
    sys.exit(main())
