"""Ingest benchmark: verified, durably stored events per second against a bare Litestar endpoint.

For each database, rounds alternate bare -> ours -> bare -> ours ..., each run on a freshly
started server (ours on an empty database), driven by wrk with bench/ingest/post_events.lua.
After each run of ours, rows in ``webhook_events`` are counted while the server is still up:
every event wrk saw acknowledged must be there. Prints a Markdown table and writes the raw
numbers to bench/ingest/results/.

    .venv/bin/python -m bench.ingest.run                      # the full benchmark
    .venv/bin/python -m bench.ingest.run --rounds 2 --duration 3 --warmup 1   # a smoke run
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from bench.databases import drop_pg_database, pg_service_url, pg_settings, recreate_pg_database
from bench.ingest.events import write_events
from bench.processes import (
    BenchError,
    cpu_between,
    cpu_seconds,
    descendants,
    die_with_parent,
    port_is_free,
    process_cpu_seconds,
    processes_named,
    run_reporting,
    stop,
    unwind_on_signals,
)

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
LUA_SCRIPT = HERE / "post_events.lua"
# Issue 15's targets per database: (share of the bare endpoint's events/s, p99 in ms).
GOALS = {"sqlite": (0.75, 15.0), "postgres": (0.60, 20.0)}
RESULTS = HERE / "results"
ENDPOINT = "/webhooks/healthdock"
SERVERS = ("bare", "ours")
# With --baseline-tree: our server from another checkout (an earlier commit), in the same
# rounds, so a change is measured against what it changed, side by side.
BASELINE = "baseline"
OUR_SERVERS = ("ours", BASELINE)
# Lines of a server's log that mean something went wrong during a run.
LOG_PROBLEMS = ("WARNING", "ERROR", "CRITICAL", "Traceback")


def _wait_ready(process: subprocess.Popen[Any], host: str, port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"server exited with {process.returncode} before ready:\n{_tail(log)}")
        connection = http.client.HTTPConnection(host, port, timeout=2)
        try:
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass  # not listening yet, or still starting up
        finally:
            connection.close()
        time.sleep(0.1)
    raise BenchError(f"server not ready on {host}:{port} within 60 s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def running_server(
    command: Sequence[str], env: dict[str, str], cwd: Path, host: str, port: int, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A server started from ``command``, ready on ``/healthz``; always stopped on exit."""
    if not port_is_free(host, port):
        raise BenchError(f"{host}:{port} is already in use; pick another --port")
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # the runner starts no threads, so it is safe
            # Its own session: a Ctrl-C reaches only the runner, which then stops it in order.
            start_new_session=True,
        )
        try:
            _wait_ready(process, host, port, log)
            yield process
        finally:
            stop(process)


def _machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies over all cores since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user
    return total - idle, total


# --- wrk ------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """The path of wrk, installing Debian's package if it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "wrk"]
    print("wrk not found; installing it:", shlex.join(install), flush=True)
    if subprocess.run(install, env=env, check=False).returncode != 0:
        # A machine that never ran apt-get update has no package lists to install from.
        subprocess.run([*prefix, "apt-get", "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    found = shutil.which("wrk")
    if not found:
        raise BenchError("wrk is still not on PATH after installing it")
    return found


@dataclass
class WrkRun:
    command: list[str]
    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    ok: int
    non2xx: int
    statuses: dict[str, int]
    first_error: str
    sent: int
    wrapped: int
    start: int
    next_start: int
    socket_errors: dict[str, int]
    wall_s: float  # the run plus loading the events file
    stdout: str


def run_wrk(
    wrk: str,
    url: str,
    events: Path,
    args: argparse.Namespace,
    seconds: float,
    start: int,
    on_loaded: Callable[[], object] | None = None,
) -> WrkRun:
    """One wrk run; ``on_loaded`` is called once wrk has read its events, as its clock starts."""
    ready = events.with_name(f"{events.name}.ready-{start}")
    command = [
        wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds:g}s",
        f"--timeout={args.timeout:g}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(events),
        str(args.threads),
        str(start),
        *([str(ready)] if on_loaded else []),
    ]
    # Loading the events file happens before wrk's clock starts; allow for it.
    report = run_reporting(
        command,
        timeout_s=seconds + 120,
        ready=[ready.with_name(f"{ready.name}.{i}") for i in range(args.threads)],
        on_ready=on_loaded,
    )
    result = report.result
    latency = result["latency_us"]
    return WrkRun(
        command=command,
        requests=result["requests"],
        duration_s=result["duration_s"],
        requests_per_s=result["requests_per_s"],
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        ok=result["ok"],
        non2xx=result["non2xx"],
        statuses=result["statuses"],
        first_error=result["first_error"],
        sent=result["sent"],
        wrapped=result["wrapped"],
        start=result["start"],
        next_start=result["next_start"],
        socket_errors=result["socket_errors"],
        wall_s=report.wall_s,
        stdout=report.stdout,
    )


# --- databases ------------------------------------------------------------------------------


_COUNT_QUERY = "SELECT status, count(*) FROM webhook_events GROUP BY status"


def stored_events(kind: str, database_url: str) -> dict[str, int]:
    """Rows in webhook_events by status, read from outside the server while it runs."""
    if kind == "sqlite":
        path = make_url(database_url).database
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows = connection.execute(_COUNT_QUERY).fetchall()
        finally:
            connection.close()
    else:
        with psycopg.connect(database_url) as pg:
            rows = pg.execute(_COUNT_QUERY).fetchall()
    return {str(status): int(count) for status, count in rows}


# --- one run --------------------------------------------------------------------------------


@dataclass
class Run:
    database: str
    server: str
    round: int
    measured: WrkRun  # with --consecutive, the last of the runs on one server
    warmup: WrkRun | None
    loadavg_before: tuple[float, float, float]
    # Every measured run on the server, in order (one unless --consecutive): whether the rate
    # holds while one server runs on, as the table it grows.
    consecutive: list[WrkRun] = field(default_factory=list)
    acknowledged: int | None = None  # 2xx in warm-up and measurement together
    stored: int | None = None
    stored_by_status: dict[str, int] = field(default_factory=dict)
    log_problems: list[str] = field(default_factory=list)
    exit_code: int | None = None
    # One server process can use one core's worth of Python (the GIL) plus what its threads
    # spend outside it; the machine figure says whether wrk + server (+ PostgreSQL) saturate it.
    server_cpu_pct: float = 0.0
    machine_busy_pct: float = 0.0
    # CPU µs per acknowledged event of the measured run, by who spent it (CPU_PARTS): where
    # the machine's two cores went, and so what rate they could carry at that cost.
    cpu_us_per_event: dict[str, float] = field(default_factory=dict)


# Who spends the CPU of a run: the server process; its children (the committer, and the
# forkserver it starts from); every PostgreSQL process (its backends and its background
# writers: nothing else uses the server during a run); and the rest of the machine.
CPU_PARTS = ("server", "committer", "postgresql", "other")


def _cpu_groups(server_pid: int) -> dict[str, dict[int, float]]:
    return {
        "committer": cpu_seconds(descendants(server_pid)),
        "postgresql": cpu_seconds(processes_named("postgres")),
    }


def server_command(server: str, args: argparse.Namespace) -> list[str]:
    if server in OUR_SERVERS:
        return [str(BIN / "healthdock-mirror"), "serve"]
    # The flags `healthdock-mirror serve` passes to uvicorn.run: one worker, no access log,
    # loop and http protocol left to uvicorn (uvloop and httptools when installed).
    return [
        str(BIN / "uvicorn"),
        "--app-dir",
        str(HERE),
        "bare_app:app",
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "info",
    ]


def service_env(
    database_url: str, args: argparse.Namespace, server: str = "ours"
) -> dict[str, str]:
    # Only our variables, so a HEALTHDOCK_* left in the caller's shell cannot skew a run.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHDOCK_")}
    if server == BASELINE:
        # This repository's entry point on the other checkout's code, first on the path.
        env["PYTHONPATH"] = str(Path(args.baseline_tree).resolve())
    env.update(
        HEALTHDOCK_DATABASE_URL=database_url,
        HEALTHDOCK_WEBHOOK_SECRET=args.secret,
        HEALTHDOCK_HOST=args.host,
        HEALTHDOCK_PORT=str(args.port),
    )
    return env


def prepare_database(
    kind: str, workdir: Path, label: str, args: argparse.Namespace, server: str = "ours"
) -> str:
    """An empty, migrated database for one run of ours; returns its URL."""
    if kind == "sqlite":
        # `serve` migrates a fresh SQLite file itself, as it would on a first start.
        return f"sqlite:///{workdir / f'{label}.db'}"
    recreate_pg_database(args.pg_admin_url, args.pg_database)
    url = pg_service_url(args.pg_admin_url, args.pg_database)
    migrate = subprocess.run(
        [str(BIN / "healthdock-mirror"), "migrate"],
        env=service_env(url, args, server),
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    if migrate.returncode != 0:
        raise BenchError(f"healthdock-mirror migrate failed:\n{migrate.stdout}{migrate.stderr}")
    return url


def one_run(
    kind: str,
    server: str,
    round_number: int,
    wrk: str,
    events: Path,
    workdir: Path,
    args: argparse.Namespace,
) -> Run:
    label = f"{kind}-{server}-{round_number}"
    database_url = (
        prepare_database(kind, workdir, label, args, server) if server in OUR_SERVERS else ""
    )
    log = workdir / f"{label}.log"
    url = f"http://{args.host}:{args.port}{ENDPOINT}"
    loadavg = os.getloadavg()
    with running_server(
        server_command(server, args),
        service_env(database_url, args, server),
        workdir,
        args.host,
        args.port,
        log,
    ) as process:
        warmup = run_wrk(wrk, url, events, args, args.warmup, 0) if args.warmup > 0 else None
        start = warmup.next_start if warmup else 0
        earlier: list[WrkRun] = []
        for _ in range(args.consecutive - 1):
            earlier.append(run_wrk(wrk, url, events, args, args.duration, start))
            start = earlier[-1].next_start
        readings: dict[str, Any] = {}

        def read_counters() -> None:
            # Once wrk has loaded its events: the seconds it spends reading the file before
            # its clock starts (2.4 s of a core with this benchmark's file) are not the run's.
            readings["server"] = process_cpu_seconds(process.pid)
            readings["machine"] = _machine_cpu()
            readings["groups"] = _cpu_groups(process.pid)

        measured = run_wrk(wrk, url, events, args, args.duration, start, read_counters)
        server_after, machine_after = process_cpu_seconds(process.pid), _machine_cpu()
        groups_after = _cpu_groups(process.pid)
        server_before, machine_before = readings["server"], readings["machine"]
        groups_before = readings["groups"]
        run = Run(kind, server, round_number, measured, warmup, loadavg, [*earlier, measured])
        # Per second of measurement; wrk's event loading before its clock starts adds ~nothing.
        run.server_cpu_pct = 100 * (server_after - server_before) / measured.duration_s
        busy, total = (a - b for a, b in zip(machine_after, machine_before, strict=True))
        run.machine_busy_pct = 100 * busy / total if total else 0.0
        spent = {
            part: cpu_between(groups_before[part], groups_after[part]) for part in groups_after
        }
        spent["server"] = server_after - server_before
        # The rest of the machine's busy time: wrk, the kernel's network work, anything else.
        spent["other"] = max(busy / os.sysconf("SC_CLK_TCK") - sum(spent.values()), 0.0)
        if measured.ok:
            run.cpu_us_per_event = {part: 1e6 * spent[part] / measured.ok for part in CPU_PARTS}
        if server in OUR_SERVERS:
            # Counted while the server still runs: a 2xx promises the row is committed now,
            # not after a graceful shutdown has flushed whatever was queued.
            run.stored_by_status = stored_events(kind, database_url)
            run.stored = sum(run.stored_by_status.values())
            run.acknowledged = sum(m.ok for m in run.consecutive) + (warmup.ok if warmup else 0)
    run.exit_code = process.returncode
    run.log_problems = [
        line
        for line in log.read_text(errors="replace").splitlines()
        if any(p in line for p in LOG_PROBLEMS)
    ]
    return run


# --- report ---------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: Sequence[Run], databases: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for kind in databases:
        by_server = {
            s: sorted(
                (r for r in runs if r.database == kind and r.server == s), key=lambda r: r.round
            )
            for s in (*SERVERS, BASELINE)
        }
        bare_rps = {r.round: r.measured.requests_per_s for r in by_server["bare"]}
        baseline_rps = {r.round: r.measured.requests_per_s for r in by_server[BASELINE]}
        for server in (*SERVERS, BASELINE):
            mine = by_server[server]
            if not mine:
                continue
            ratios = [
                r.measured.requests_per_s / bare_rps[r.round] for r in mine if bare_rps.get(r.round)
            ]
            against_baseline = [
                r.measured.requests_per_s / baseline_rps[r.round]
                for r in mine
                if baseline_rps.get(r.round)
            ]
            acknowledged = [r.acknowledged for r in mine if r.acknowledged is not None]
            stored = [r.stored for r in mine if r.stored is not None]
            rows.append(
                {
                    "database": kind,
                    "server": server,
                    "rounds": len(mine),
                    "median_rps": _median([r.measured.requests_per_s for r in mine]),
                    "median_p50_ms": _median([r.measured.p50_ms for r in mine]),
                    "median_p99_ms": _median([r.measured.p99_ms for r in mine]),
                    "ratio": _median(ratios) if server in OUR_SERVERS and ratios else None,
                    "vs_baseline": (
                        _median(against_baseline) if server == "ours" and against_baseline else None
                    ),
                    "non2xx": sum(
                        r.measured.non2xx + (r.warmup.non2xx if r.warmup else 0) for r in mine
                    ),
                    "socket_errors": sum(
                        sum(w.socket_errors.values())
                        for r in mine
                        for w in (r.measured, r.warmup)
                        if w
                    ),
                    "acknowledged": sum(acknowledged) if acknowledged else None,
                    "stored": sum(stored) if stored else None,
                    "lost_runs": sum(
                        1 for r in mine if r.stored is not None and r.stored < (r.acknowledged or 0)
                    ),
                    "wrapped_runs": sum(
                        1 for r in mine for w in (r.measured, r.warmup) if w and w.wrapped
                    ),
                    "log_problems": sum(len(r.log_problems) for r in mine),
                    "cpu_us_per_event": {
                        part: _median(
                            [r.cpu_us_per_event[part] for r in mine if r.cpu_us_per_event]
                        )
                        for part in CPU_PARTS
                    },
                    "median_bare_rps": _median(list(bare_rps.values())),
                }
            )
    return rows


def _table(header: Sequence[str], align: str, body: Sequence[Sequence[object]]) -> list[str]:
    """Markdown table lines; ``align`` has one letter per column, l or r."""
    rule = ["---:" if a == "r" else "---" for a in align]
    lines: list[Sequence[object]] = [header, rule, *body]
    return ["| " + " | ".join(str(cell) for cell in line) + " |" for line in lines]


def markdown(rows: Sequence[dict[str, Any]], connections: int) -> str:
    body = []
    for row in rows:
        ratio = f"{row['ratio']:.0%}" if row["ratio"] is not None else "-"
        if row["stored"] is None:
            durability = "-"
        else:
            verdict = "ok" if row["lost_runs"] == 0 else f"LOST in {row['lost_runs']} run(s)"
            durability = f"{row['acknowledged']} / {row['stored']} ({verdict})"
        body.append(
            [
                row["database"],
                row["server"],
                f"{row['median_rps']:.0f}",
                f"{row['median_p50_ms']:.2f}",
                f"{row['median_p99_ms']:.2f}",
                ratio,
                "-" if row.get("vs_baseline") is None else f"{row['vs_baseline']:.0%}",
                row["non2xx"],
                row["socket_errors"],
                durability,
            ]
        )
    header = [
        "database",
        "server",
        "median req/s",
        "median p50 (ms)",
        "median p99 (ms)",
        "ours/bare",
        "ours/baseline",
        "non-2xx",
        "socket errors",
        "acknowledged / stored",
    ]
    lines = [*_table(header, "llrrrrrrrl", body), ""]
    for row in rows:
        if row["server"] != "ours":
            continue
        share, p99_ms = GOALS[row["database"]]
        throughput = "ok" if row["ratio"] is not None and row["ratio"] >= share else "MISSED"
        latency = "ok" if row["median_p99_ms"] < p99_ms else "MISSED"
        lines.append(
            f"- goal on {row['database']} (issue 15): >= {share:.0%} of bare throughput: "
            f"{throughput}; p99 < {p99_ms:g} ms at {connections} connections: {latency}"
        )
    lines += ["", *cpu_table(rows)]
    for row in rows:
        where = f"{row['database']}/{row['server']}"
        if row["wrapped_runs"]:
            lines.append(
                f"- WARNING {where}: {row['wrapped_runs']} wrk run(s) ran out of events "
                "and repeated some; raise --events or --max-rate"
            )
        if row["log_problems"]:
            lines.append(
                f"- NOTE {where}: {row['log_problems']} warning/error line(s) in the server "
                "logs (see log_problems in the JSON results)"
            )
    return "\n".join(lines)


def cpu_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Where each server's CPU went, per acknowledged event, and what that cost makes of the
    goal: the cores that the goal's rate would keep busy, against the machine's."""
    body = []
    for row in rows:
        spent = row["cpu_us_per_event"]
        total = sum(spent.values())
        needed = "-"
        if row["server"] in OUR_SERVERS and total == total:  # not NaN
            share, _ = GOALS[row["database"]]
            needed = f"{total * share * row['median_bare_rps'] / 1e6:.2f}"
        body.append(
            [
                row["database"],
                row["server"],
                *(f"{spent[part]:.0f}" for part in CPU_PARTS),
                f"{total:.0f}",
                needed,
            ]
        )
    header = [
        "database",
        "server",
        *(f"{part} µs/event" for part in CPU_PARTS),
        "total µs/event",
        f"cores the goal's rate needs at this cost (machine: {os.cpu_count()})",
    ]
    return _table(header, "ll" + "r" * (len(CPU_PARTS) + 2), body)


def per_round(runs: Sequence[Run]) -> str:
    body = [
        [
            r.database,
            r.round,
            r.server,
            f"{r.measured.requests_per_s:.0f}",
            f"{r.measured.p50_ms:.2f}",
            f"{r.measured.p99_ms:.2f}",
            r.measured.non2xx,
            "-" if r.stored is None else f"{r.acknowledged} / {r.stored}",
            f"{r.server_cpu_pct:.0f}%",
            f"{r.machine_busy_pct:.0f}%",
        ]
        for r in runs
    ]
    header = [
        "database",
        "round",
        "server",
        "req/s",
        "p50 (ms)",
        "p99 (ms)",
        "non-2xx",
        "ack / stored",
        "server CPU",
        "machine busy",
    ]
    return "\n".join(_table(header, "lrlrrrrlrr", body))


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest.run",
        description="Webhook receiver throughput and latency against a bare Litestar endpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--databases", default="sqlite,postgres", help="comma-separated: sqlite, postgres"
    )
    parser.add_argument("--rounds", type=int, default=5, help="bare/ours pairs per database")
    parser.add_argument("--duration", type=float, default=10, help="seconds measured per run")
    parser.add_argument(
        "--warmup",
        type=float,
        default=2,
        help="seconds of unmeasured load before each run (0: none)",
    )
    parser.add_argument(
        "--consecutive",
        type=int,
        default=1,
        help="measured runs back to back on each server start; the last is reported",
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (-t)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (-c)")
    parser.add_argument(
        "--timeout", type=float, default=10, help="wrk's request timeout in seconds"
    )
    parser.add_argument(
        "--events",
        type=int,
        default=0,
        help="signed events to generate; 0 sizes it from --max-rate, warm-up and duration",
    )
    parser.add_argument(
        "--max-rate",
        type=int,
        default=15_000,
        help="highest req/s expected from either server; with --events 0 it sizes the events file",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=8150, help="port for both servers (one at a time)"
    )
    parser.add_argument(
        "--secret", default="secret", help="webhook secret for the server and the signatures"
    )
    parser.add_argument(
        "--pg-admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL URL allowed to drop and create --pg-database",
    )
    parser.add_argument(
        "--pg-database", default="bench_ingest", help="throwaway database, recreated for each run"
    )
    parser.add_argument(
        "--workdir", type=Path, help="where SQLite files, logs and events go (default: a temp dir)"
    )
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the work dir (logs, databases) afterwards"
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="directory for the JSON results"
    )
    parser.add_argument(
        "--baseline-tree",
        metavar="DIR",
        help="also run our server from this checkout (say `git worktree add DIR <commit>`) in "
        "every round, and report ours/baseline",
    )
    args = parser.parse_args(argv)
    args.database_list = [d.strip() for d in args.databases.split(",") if d.strip()]
    unknown = set(args.database_list) - {"sqlite", "postgres"}
    if unknown or not args.database_list:
        parser.error(f"--databases: unknown {sorted(unknown)}; use sqlite and/or postgres")
    if args.threads < 1 or args.connections < args.threads or args.rounds < 1 or args.duration <= 0:
        parser.error(
            "need --threads >= 1, --connections >= --threads, --rounds >= 1, --duration > 0"
        )
    if not 8100 <= args.port <= 8199:
        print(f"note: --port {args.port} is outside 8100-8199", file=sys.stderr)
    return args


def events_needed(args: argparse.Namespace) -> int:
    if args.events:
        return int(args.events)
    # One server start consumes warm-up + measurements; the file restarts at 0 for the next one.
    # 1.5x headroom, plus what is in flight when each wrk stops.
    seconds = args.warmup + args.duration * args.consecutive
    return int(args.max_rate * seconds * 1.5) + int(4 * (1 + args.consecutive) * args.connections)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    unwind_on_signals()
    command_line = shlex.join(
        [
            sys.executable,
            "-m",
            "bench.ingest.run",
            *(argv if argv is not None else sys.argv[1:]),
        ]
    )
    wrk = ensure_wrk()
    wrk_version = subprocess.run(
        [wrk, "-v"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[:1]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    workdir.mkdir(parents=True, exist_ok=True)
    events = workdir / "events.tsv"
    count = events_needed(args)
    print(f"generating {count} signed events in {events} ...", flush=True)
    write_events(events, count, args.secret.encode())

    runs: list[Run] = []
    environment: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": wrk_version[0] if wrk_version else "?",
        "events_file_lines": count,
    }
    interrupted = False
    failure: str | None = None
    try:
        if "postgres" in args.database_list:
            environment["postgres"] = pg_settings(args.pg_admin_url)
        for kind in args.database_list:
            for round_number in range(1, args.rounds + 1):
                servers = [*SERVERS, BASELINE] if args.baseline_tree else list(SERVERS)
                # ABBA: the order flips each round, so drift hurts no server.
                for server in servers if round_number % 2 else reversed(servers):
                    run = one_run(kind, server, round_number, wrk, events, workdir, args)
                    runs.append(run)
                    m = run.measured
                    extra = (
                        ""
                        if run.stored is None
                        else f", acknowledged {run.acknowledged} / stored {run.stored}"
                    )
                    if len(run.consecutive) > 1:
                        rates = " -> ".join(f"{c.requests_per_s:.0f}" for c in run.consecutive)
                        p99s = " -> ".join(f"{c.p99_ms:.1f}" for c in run.consecutive)
                        print(f"  consecutive runs: {rates} req/s, p99 {p99s} ms", flush=True)
                    print(
                        f"{kind} round {round_number} {server}: {m.requests_per_s:.0f} req/s, "
                        f"p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms, non-2xx {m.non2xx}{extra}",
                        flush=True,
                    )
                    if m.non2xx:
                        print(f"  first non-2xx: {m.first_error[:200]}", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; reporting the runs that finished", file=sys.stderr)
    except BenchError as error:
        failure = str(error)
        print(f"\nbenchmark stopped: {failure}", file=sys.stderr)
    finally:
        if "postgres" in args.database_list:
            with suppress(psycopg.Error):
                drop_pg_database(args.pg_admin_url, args.pg_database)
        if not args.keep_workdir and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = summarize(runs, args.database_list)
    report = "\n\n".join(
        [
            f"Command: `{command_line}`",
            "wrk: `" + (shlex.join(runs[-1].measured.command) if runs else "(no run)") + "`",
            markdown(rows, args.connections),
            per_round(runs),
        ]
    )
    print()
    print(report)

    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.results / f"ingest-{stamp}.json"
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out.write_text(
        json.dumps(
            {
                "command": command_line,
                "settings": settings,
                "environment": environment,
                "interrupted": interrupted,
                "failure": failure,
                "summary": rows,
                "runs": [asdict(r) for r in runs],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nraw results: {out}")
    if interrupted:
        return 130
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
