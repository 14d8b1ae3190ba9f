"""A no-change pass: ours against the leanest pass this stack allows (``lean_pass.py``).

The issue asks a second pass over 200,000 unchanged patients to make at least 50,000 records
per CPU-second of the whole ``sync`` process. This runner says how far that is from the work
no reconciler can skip, and where ours spends the rest. For each database it fills a mirror
with one pass of ours, then runs, in alternating order each round, on the same database:

- ``ours``: ``healthdock-mirror sync patients`` (its second and later passes: nothing changed);
- ``lean, aiohttp``: ``lean_pass.py`` with aiohttp, whose HTTP parser is written in C;
- ``lean, httpx``: ``lean_pass.py`` with httpx on its own transport (httpcore and h11, in
  Python), which the reconciler used before its transport moved to aiohttp.

and, once each, their start-up alone: ``healthdock-mirror --help`` and ``lean_pass.py
--startup-only``. CPU is user + system time of each process (``wait4``), start-up included.

    .venv/bin/python -m bench.sync.floor                       # 200k patients, both databases
    .venv/bin/python -m bench.sync.floor --patients 50000 --databases sqlite --rounds 3
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.processes import BenchError, unwind_on_signals
from bench.sync.run import (
    BIN,
    GOAL_STEADY_RECORDS_PER_CPU_S,
    RESULTS,
    Measured,
    base_env,
    discard_database,
    fresh_database,
    last_sync_run,
    migrate,
    ours_env,
    run_measured,
    run_ours,
    running_fake,
)

HERE = Path(__file__).resolve().parent
LEAN_SCRIPT = HERE / "lean_pass.py"
OURS, LEAN_AIOHTTP, LEAN_HTTPX = "ours", "lean, aiohttp", "lean, httpx"
TOOLS = (OURS, LEAN_AIOHTTP, LEAN_HTTPX)
_LEAN_CLIENT = {LEAN_AIOHTTP: "aiohttp", LEAN_HTTPX: "httpx"}


@dataclass(frozen=True, slots=True)
class PassRun:
    database: str
    patients: int
    tool: str
    round: int
    cpu_s: float
    wall_s: float
    records: int

    @property
    def records_per_cpu_s(self) -> float:
        return self.records / self.cpu_s


@dataclass(frozen=True, slots=True)
class Startup:
    database: str
    tool: str
    cpu_s: float


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sync.floor",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--patients", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5, help="passes of each tool per database")
    parser.add_argument("--concurrency", type=int, default=16, help="pages in flight, each tool")
    parser.add_argument("--reserve", type=float, default=0.2, help="HEALTHDOCK_SYNC_RATE_RESERVE")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8251, help="the fake's port")
    parser.add_argument("--api-key", default="fake-api-key")
    parser.add_argument("--seed", type=int, default=1, help="the fake's seed")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a kill")
    parser.add_argument(
        "--pg-admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL URL allowed to drop and create --pg-database",
    )
    parser.add_argument("--pg-database", default="bench_sync_floor")
    parser.add_argument("--workdir", type=Path, help="SQLite files and logs (default: temp dir)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and databases")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON results directory")
    args = parser.parse_args(argv)
    args.database_list = [d.strip() for d in args.databases.split(",") if d.strip()]
    if set(args.database_list) - {"sqlite", "postgres"} or not args.database_list:
        parser.error("--databases: use sqlite and/or postgres")
    if args.rounds < 1 or args.patients < 1:
        parser.error("--rounds and --patients must be at least 1")
    return args


def round_order(round_number: int) -> list[str]:
    """Each tool goes first, middle and last in turn, so a drift of the machine's speed
    over the run spreads over all three."""
    shift = round_number % len(TOOLS)
    order = list(TOOLS[shift:] + TOOLS[:shift])
    return order[::-1] if (round_number // len(TOOLS)) % 2 else order


def lean_command(base_url: str, url: str, args: argparse.Namespace, tool: str) -> list[str]:
    return [
        sys.executable,
        str(LEAN_SCRIPT),
        "--base-url",
        base_url,
        "--api-key",
        args.api_key,
        "--database",
        url,
        "--client",
        _LEAN_CLIENT[tool],
        "--concurrency",
        str(args.concurrency),
    ]


def checked(measured: Measured, what: str) -> Measured:
    if measured.returncode != 0 or measured.timed_out:
        raise BenchError(f"{what} failed ({measured.returncode}):\n{measured.stdout_tail}")
    return measured


def run_database(kind: str, args: argparse.Namespace, workdir: Path) -> list[PassRun | Startup]:
    found: list[PassRun | Startup] = []
    with running_fake(args, workdir, f"floor-{kind}", patients=args.patients) as fake:
        url = fresh_database(kind, workdir, f"floor-{kind}", args)
        try:
            migrate(url, fake.base_url, workdir, args)
            checked(run_ours(url, fake, workdir, f"{kind}-fill", args), "the first pass")
            for number in range(args.rounds):
                for tool in round_order(number):
                    label = f"{kind}-{number}-{tool.replace(', ', '-')}"
                    if tool == OURS:
                        measured = checked(run_ours(url, fake, workdir, label, args), label)
                        records = ours_records(kind, url, args.patients, label)
                    else:
                        command = lean_command(fake.base_url, url, args, tool)
                        log = workdir / f"{label}.log"
                        measured = checked(
                            run_measured(command, base_env(), workdir, log, args.timeout), label
                        )
                        records = lean_records(measured, args.patients, label)
                    run = PassRun(kind, args.patients, tool, number, measured.cpu_s,
                                  measured.wall_s, records)  # fmt: skip
                    print(f"{kind} round {number + 1} {tool}: {run.cpu_s:.2f} CPU-s, "
                          f"{run.records_per_cpu_s:,.0f} records/CPU-s", flush=True)  # fmt: skip
                    found.append(run)
            found += startups(kind, url, fake.base_url, workdir, args)
        finally:
            discard_database(kind, url, args)
    return found


def ours_records(kind: str, url: str, patients: int, label: str) -> int:
    """The records our pass read, from its run; a pass that did not succeed is refused."""
    run = last_sync_run(kind, url)
    if run.get("outcome") != "success" or run.get("records") != patients:
        raise BenchError(f"{label}: expected a successful pass over {patients} records: {run}")
    return patients


def lean_records(measured: Measured, patients: int, label: str) -> int:
    """The records the lean pass read; a run that found a change measured something else."""
    result = measured.result or {}
    if result.get("records") != patients or result.get("changed") != 0:
        raise BenchError(f"{label}: expected {patients} unchanged records, got {result}")
    return patients


def startups(
    kind: str, url: str, base_url: str, workdir: Path, args: argparse.Namespace
) -> list[Startup]:
    env = {**base_env(), **ours_env(url, base_url, args)}
    ours = run_measured([str(BIN / "healthdock-mirror"), "--help"], env, workdir,
                        workdir / f"{kind}-startup-ours.log", args.timeout)  # fmt: skip
    found = [Startup(kind, OURS, checked(ours, "healthdock-mirror --help").cpu_s)]
    for tool in (LEAN_AIOHTTP, LEAN_HTTPX):
        command = [*lean_command(base_url, url, args, tool), "--startup-only"]
        log = workdir / f"{kind}-startup-{_LEAN_CLIENT[tool]}.log"
        lean = run_measured(command, base_env(), workdir, log, args.timeout)
        found.append(Startup(kind, tool, checked(lean, f"{tool} --startup-only").cpu_s))
    return found


def report(found: Sequence[PassRun | Startup], patients: int) -> str:
    runs = [r for r in found if isinstance(r, PassRun)]
    starts = {(s.database, s.tool): s.cpu_s for s in found if isinstance(s, Startup)}
    lines = [
        f"No-change pass, {patients:,} patients: medians of each tool's rounds; ours / lean is "
        "the median of each round's ratio.",
        "",
        "| database | pass | CPU-s | records / CPU-s | start-up CPU-s | µs per record after "
        "start-up | ours / this, CPU |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for kind in dict.fromkeys(r.database for r in runs):
        mine = {t: [r for r in runs if r.database == kind and r.tool == t] for t in TOOLS}
        for tool in TOOLS:
            cpu = statistics.median(r.cpu_s for r in mine[tool])
            start = starts.get((kind, tool))
            per_record = (cpu - start) / patients * 1e6 if start is not None else None
            ratio = "" if tool == OURS else f"{_round_ratio(mine[OURS], mine[tool]):.2f}x"
            lines.append(
                f"| {kind} | {tool} | {cpu:.2f} | {patients / cpu:,.0f} | "
                f"{'' if start is None else f'{start:.2f}'} | "
                f"{'' if per_record is None else f'{per_record:.1f}'} | {ratio} |"
            )
    lines += ["", f"Goal: at least {GOAL_STEADY_RECORDS_PER_CPU_S:,} records per CPU-second."]
    return "\n".join(lines)


def _round_ratio(ours: Sequence[PassRun], other: Sequence[PassRun]) -> float:
    by_round = {r.round: r.cpu_s for r in other}
    return statistics.median(r.cpu_s / by_round[r.round] for r in ours if r.round in by_round)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    unwind_on_signals()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-floor-"))
    workdir.mkdir(parents=True, exist_ok=True)
    found: list[PassRun | Startup] = []
    for kind in args.database_list:
        found += run_database(kind, args, workdir)
    text = report(found, args.patients)
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.results / f"floor-{stamp}.json"
    command = shlex.join([sys.executable, "-m", "bench.sync.floor", *(argv or sys.argv[1:])])
    rows = [{"kind": type(r).__name__, **asdict(r)} for r in found]
    out.write_text(json.dumps({"command": command, "runs": rows, "report": text}, indent=2))
    print(f"results: {out}")
    if not args.keep_workdir and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
