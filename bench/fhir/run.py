"""FHIR read and search latency on a seeded mirror, and the bulk export's time and memory.

The databases are the ones bench/fhir/seed.py fills (1,000,000 patients, 5,000,000
appointments): a SQLite file and a PostgreSQL database, both at the migrations' head. Request
paths are built from values sampled out of each database with SQL (ids, surnames, given names,
ABHA numbers, days, doctors), about 500 distinct paths per query shape. Then, per round and
database (the order flips each round), one ``healthdock-mirror serve --no-scheduler`` serves
the database while wrk drives each shape in turn with bench/fhir/search.lua: a short warm-up,
then the measured run. Any answer but 200 fails that run. Last, ``healthdock-mirror export
fhir`` runs once per database, timed, its peak RSS taken by wait4, its output deleted.

    .venv/bin/python -m bench.fhir.run                       # the full benchmark
    .venv/bin/python -m bench.fhir.run --rounds 1 --duration 2 --warmup 1 --no-export  # smoke
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import re
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, event, func, select
from sqlalchemy.engine import Connection

from bench.databases import pg_settings
from bench.ingest.run import _machine_cpu, _process_cpu_seconds, ensure_wrk, running_server
from bench.processes import BenchError, run_reporting, unwind_on_signals
from bench.sync.run import run_measured
from config import DEFAULT_TIMEZONE
from fhir_r4 import ABHA_SYSTEM, SearchContext, parse_search
from fhir_r4.mapping import APPOINTMENT_STATUSES
from mirror import Resource, create_mirror_engine, current_revision, head_revision, search
from mirror.schema import MIRRORED_TABLES

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parents[1]
BIN = Path(sys.executable).parent
LUA_SCRIPT = HERE / "search.lua"
# Outside the working tree: bench/fhir has no ignored results/ directory of its own yet.
RESULTS = Path(__file__).resolve().parent / "results"
LOG_PROBLEMS = ("WARNING", "ERROR", "CRITICAL", "Traceback")
DATABASES = ("sqlite", "postgres")
# "A recent instant" for _lastUpdated: one of the updates of the newest week.
RECENT = timedelta(days=7)
PREFIX_LENGTH = 3


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    request: str  # what its paths look like, for the report


SHAPES = (
    Shape("read-patient", "Patient/{id}"),
    Shape("read-appointment", "Appointment/{id}"),
    Shape("family-prefix", "Patient?family=<3-letter prefix of a surname>"),
    Shape("family-page-2", "Patient?family=<prefix>&_count=20&_cursor=<page 1's next link>"),
    Shape("family-exact-given", "Patient?family:exact=<surname>&given=<given name>"),
    Shape("birthdate", "Patient?birthdate=<a day>"),
    Shape("identifier-abha", f"Patient?identifier={ABHA_SYSTEM}|<ABHA number>"),
    Shape("name-gender", "Patient?name=<3-letter prefix of a given name>&gender=female"),
    Shape("last-updated", "Patient?_lastUpdated=gt<an update of the newest week>"),
    Shape("appointment-date", "Appointment?date=<a local day>"),
    Shape("practitioner-week", "Appointment?practitioner=<doctor>&date=ge<day>&date=lt<day+7>"),
    Shape("appointment-patient", "Appointment?patient=<patient id>"),
    Shape("booked-day", "Appointment?status=booked&date=<an upcoming day>"),
)
SHAPE_NAMES = tuple(shape.name for shape in SHAPES)
# Needs a running server: its paths come from the first pages' next links.
PAGE_TWO = "family-page-2"
READS = ("read-patient", "read-appointment")
# Explained on PostgreSQL whether slow or not (--explain): three different plans' worth.
EXPLAINED = ("family-prefix", "appointment-date", "practitioner-week")


# --- values sampled from a database ----------------------------------------------------------


@dataclass
class Sample:
    """Live records picked at random from one database, and what the paths need of them."""

    patients: list[dict[str, Any]]
    appointments: list[dict[str, Any]]
    recent_updates: list[datetime]  # patients' updated_at within RECENT of the newest one
    live: dict[str, int]  # live rows per table
    seconds: float = 0.0


def _picked_ids(
    connection: Connection, resource: Resource, k: int, rng: random.Random
) -> tuple[list[str], int]:
    """``k`` live ids at random positions in id order, and how many live ids there are.

    Positions rather than ``ORDER BY random()``: the same seed picks the same records from
    two databases holding the same rows, so both get the same paths."""
    table = MIRRORED_TABLES[resource.value]
    live = select(table.c.id).where(table.c.deleted_at.is_(None))
    total = int(connection.execute(select(func.count()).select_from(live.subquery())).scalar_one())
    wanted = sorted(rng.sample(range(total), min(k, total)))
    picked: list[str] = []
    rows = connection.execution_options(stream_results=True, yield_per=20_000).execute(
        live.order_by(table.c.id)
    )
    following = iter(wanted)
    target = next(following, None)
    for position, (record_id,) in enumerate(rows):
        if target is None:
            break
        if position == target:
            picked.append(str(record_id))
            target = next(following, None)
    rows.close()
    rng.shuffle(picked)  # paths in no particular order, so a run does not walk the index
    return picked, total


def _rows(
    connection: Connection, resource: Resource, ids: Sequence[str], columns: Sequence[str]
) -> list[dict[str, Any]]:
    """The records ``ids``, typed as the mirror's schema reads them, in ``ids`` order."""
    table = MIRRORED_TABLES[resource.value]
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        query = select(*(table.c[c] for c in ["id", *columns])).where(table.c.id.in_(chunk))
        for row in connection.execute(query):
            found[str(row.id)] = dict(row._mapping)
    return [found[i] for i in ids if i in found]


def _utc(value: datetime) -> datetime:
    # The mirror keeps naive UTC on SQLite and aware values on PostgreSQL.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def sample_database(engine: Engine, k: int, seed: int) -> Sample:
    began = time.perf_counter()
    rng = random.Random(seed)
    patients = MIRRORED_TABLES[Resource.PATIENT.value]
    with engine.connect() as connection:
        patient_ids, live_patients = _picked_ids(connection, Resource.PATIENT, k, rng)
        appointment_ids, live_appointments = _picked_ids(connection, Resource.APPOINTMENT, k, rng)
        patient_rows = _rows(
            connection,
            Resource.PATIENT,
            patient_ids,
            ["first_name", "last_name", "date_of_birth", "gender", "abha_number"],
        )
        appointment_rows = _rows(
            connection,
            Resource.APPOINTMENT,
            appointment_ids,
            ["patient_id", "doctor_id", "local_date", "status"],
        )
        newest = connection.execute(
            select(func.max(patients.c.updated_at)).where(patients.c.deleted_at.is_(None))
        ).scalar_one()
        recent: list[datetime] = []
        if newest is not None:
            query = (
                select(patients.c.updated_at)
                .where(patients.c.deleted_at.is_(None), patients.c.updated_at >= newest - RECENT)
                .order_by(patients.c.updated_at, patients.c.id)
            )
            updates = [_utc(value) for (value,) in connection.execute(query)]
            recent = rng.sample(updates, min(k, len(updates)))
    return Sample(
        patient_rows,
        appointment_rows,
        recent,
        {"patients": live_patients, "appointments": live_appointments},
        time.perf_counter() - began,
    )


# --- request paths ---------------------------------------------------------------------------


def _path(resource: str, params: Sequence[tuple[str, str]]) -> str:
    # ":" and "/" stay readable (family:exact, times, systems); "|" and the rest are encoded.
    return f"/fhir/{resource}?{urlencode(params, quote_via=quote, safe=':/')}"


def _instant(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _day(value: date) -> str:
    return value.isoformat()


def build_paths(sample: Sample, per_shape: int) -> dict[str, list[str]]:
    """Every shape's paths but page 2's (it needs the server): distinct, at most ``per_shape``.

    A shape over few distinct values (surname prefixes, days) has fewer paths than that."""
    patients, appointments = sample.patients, sample.appointments
    female = [p for p in patients if p["gender"] == "F" and p["first_name"]]
    # Booked (scheduled or confirmed upstream) is an upcoming appointment's status only.
    booked = {ours for ours, theirs in APPOINTMENT_STATUSES.items() if theirs == "booked"}
    upcoming = [a for a in appointments if a["status"] in booked and a["local_date"] is not None]
    dated = [a for a in appointments if a["local_date"] is not None]
    with_doctor = [a for a in dated if a["doctor_id"]]
    candidates: dict[str, list[str]] = {
        "read-patient": [f"/fhir/Patient/{quote(p['id'])}" for p in patients],
        "read-appointment": [f"/fhir/Appointment/{quote(a['id'])}" for a in appointments],
        "family-prefix": [
            _path("Patient", [("family", p["last_name"][:PREFIX_LENGTH])])
            for p in patients
            if p["last_name"] and len(p["last_name"]) >= PREFIX_LENGTH
        ],
        "family-exact-given": [
            _path("Patient", [("family:exact", p["last_name"]), ("given", p["first_name"])])
            for p in patients
            if p["last_name"] and p["first_name"]
        ],
        "birthdate": [
            _path("Patient", [("birthdate", _day(p["date_of_birth"]))])
            for p in patients
            if p["date_of_birth"] is not None
        ],
        "identifier-abha": [
            _path("Patient", [("identifier", f"{ABHA_SYSTEM}|{p['abha_number']}")])
            for p in patients
            if p["abha_number"]
        ],
        "name-gender": [
            _path("Patient", [("name", p["first_name"][:PREFIX_LENGTH]), ("gender", "female")])
            for p in female
            if len(p["first_name"]) >= PREFIX_LENGTH
        ],
        "last-updated": [
            _path("Patient", [("_lastUpdated", f"gt{_instant(u)}")]) for u in sample.recent_updates
        ],
        "appointment-date": [
            _path("Appointment", [("date", _day(a["local_date"]))]) for a in dated
        ],
        "practitioner-week": [
            _path(
                "Appointment",
                [
                    ("practitioner", a["doctor_id"]),
                    ("date", f"ge{_day(a['local_date'])}"),
                    ("date", f"lt{_day(a['local_date'] + timedelta(days=7))}"),
                ],
            )
            for a in with_doctor
        ],
        "appointment-patient": [
            _path("Appointment", [("patient", a["patient_id"])])
            for a in appointments
            if a["patient_id"]
        ],
        "booked-day": [
            _path("Appointment", [("status", "booked"), ("date", _day(a["local_date"]))])
            for a in upcoming
        ],
    }
    return {name: list(dict.fromkeys(paths))[:per_shape] for name, paths in candidates.items()}


def _get_json(host: str, port: int, path: str, token: str) -> Any:
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise BenchError(f"GET {path}: {response.status} {body[:300]!r}")
        return json.loads(body)
    finally:
        connection.close()


def second_pages(host: str, port: int, token: str, first_pages: Sequence[str]) -> list[str]:
    """The ``next`` links of ``first_pages``, as paths; a search with one page has none."""
    found = []
    for first in first_pages:
        bundle = _get_json(host, port, first, token)
        link = next((lk["url"] for lk in bundle.get("link", []) if lk["relation"] == "next"), None)
        if link is not None:
            parts = urlsplit(link)
            found.append(f"{parts.path}?{parts.query}")
    return found


# --- wrk -------------------------------------------------------------------------------------


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
    mean_ms: float
    ok: int
    non200: int
    statuses: dict[str, int]
    first_error: str
    paths: int
    empty: int  # 200 searchsets that matched nothing
    cycles: int
    socket_errors: dict[str, int]
    bytes_read: int

    @property
    def failed(self) -> bool:
        return self.non200 > 0 or sum(self.socket_errors.values()) > 0

    @property
    def stalled(self) -> bool:
        """No request finished within the run: each takes longer than the run lasts."""
        return self.requests == 0


def run_wrk(
    wrk: str, base_url: str, paths_file: Path, token: str, args: argparse.Namespace, seconds: float
) -> WrkRun:
    command = [
        wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds:g}s",
        f"--timeout={args.timeout:g}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        base_url,
        "--",
        str(paths_file),
        str(args.threads),
    ]
    # The token goes in the environment, not on the command line we print.
    result = run_reporting(
        command, timeout_s=seconds + 60, env={**os.environ, "FHIR_BENCH_TOKEN": token}
    ).result
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
        mean_ms=latency["mean"] / 1000,
        ok=result["ok"],
        non200=result["non200"],
        statuses=result["statuses"],
        first_error=result["first_error"],
        paths=result["paths"],
        empty=result["empty"],
        cycles=result["cycles"],
        socket_errors=result["socket_errors"],
        bytes_read=result["bytes_read"],
    )


# --- databases -------------------------------------------------------------------------------


@dataclass
class Database:
    kind: str
    url: str
    live: dict[str, int] = field(default_factory=dict)
    revision: str | None = None
    paths: dict[str, list[str]] = field(default_factory=dict)
    paths_dir: Path | None = None
    sample_seconds: float = 0.0

    def paths_file(self, shape: str) -> Path:
        assert self.paths_dir is not None
        return self.paths_dir / f"{self.kind}-{shape}.txt"


def _database_url(kind: str, given: str) -> str:
    if kind == "postgres" or "://" in given:
        return given
    return f"sqlite:///{Path(given).resolve()}"


def check_database(database: Database) -> None:
    """Refuse a database that is missing, empty or not at the migrations' head: measuring an
    unindexed or half-seeded mirror would be measuring the wrong thing."""
    if database.kind == "sqlite":
        path = Path(database.url.removeprefix("sqlite:///"))
        if not path.exists():
            raise BenchError(f"{path}: no such file; seed it with python -m bench.fhir.seed {path}")
    engine = create_mirror_engine(database.url)
    try:
        database.revision = current_revision(engine)
    finally:
        engine.dispose()
    head = head_revision()
    if database.revision != head:
        raise BenchError(
            f"{database.kind}: schema at {database.revision or 'nothing'}, not the head {head}: "
            f"run HEALTHDOCK_DATABASE_URL={shlex.quote(database.url)} "
            f"{BIN / 'healthdock-mirror'} migrate"
        )


def prepare_paths(database: Database, args: argparse.Namespace, workdir: Path) -> None:
    engine = create_mirror_engine(database.url)
    try:
        sample = sample_database(engine, args.sample, args.seed)
    finally:
        engine.dispose()
    if not sample.live["patients"] or not sample.live["appointments"]:
        raise BenchError(f"{database.kind}: the mirror is empty; seed it with bench.fhir.seed")
    database.live = sample.live
    database.sample_seconds = sample.seconds
    database.paths = build_paths(sample, args.paths)
    database.paths_dir = workdir
    for shape, paths in database.paths.items():
        database.paths_file(shape).write_text("".join(f"{p}\n" for p in paths))


def add_second_pages(database: Database, args: argparse.Namespace, token: str) -> None:
    """Page 2 of each family prefix, from the running server's own next links."""
    pages = second_pages(args.host, args.port, token, database.paths["family-prefix"])
    database.paths[PAGE_TWO] = pages[: args.paths]
    database.paths_file(PAGE_TWO).write_text("".join(f"{p}\n" for p in pages))


# --- one server, every shape -----------------------------------------------------------------


@dataclass
class Run:
    database: str
    round: int
    shape: str
    measured: WrkRun
    warmup: WrkRun | None
    # One server process is one core's worth of Python at most (the GIL); the machine figure
    # says whether wrk + server (+ PostgreSQL) saturate the two cores.
    server_cpu_pct: float
    machine_busy_pct: float

    @property
    def failed(self) -> bool:
        return self.measured.failed or (self.warmup is not None and self.warmup.failed)

    @property
    def stalled(self) -> bool:
        return self.measured.stalled


@dataclass
class Serving:
    database: str
    round: int
    log_problems: list[str]
    exit_code: int | None
    loadavg_before: tuple[float, float, float]  # anything else running moves the numbers


def service_env(database_url: str, token: str, args: argparse.Namespace) -> dict[str, str]:
    # Only our variables, so a HEALTHDOCK_* left in the caller's shell cannot skew a run
    # (HEALTHDOCK_TIMEZONE included: the paths' days are the default zone's).
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHDOCK_")}
    env.update(
        HEALTHDOCK_DATABASE_URL=database_url,
        HEALTHDOCK_ADMIN_TOKEN=token,
        HEALTHDOCK_WEBHOOK_SECRET=secrets.token_hex(16),
        HEALTHDOCK_HOST=args.host,
        HEALTHDOCK_PORT=str(args.port),
    )
    return env


def quiesce(limit_s: float = 30.0, busy_below: float = 0.25) -> float:
    """Wait until the machine is nearly idle: the requests a previous wrk run left in flight
    (a slow search's can run for seconds) must not overlap the next run. Returns the wait."""
    began = time.monotonic()
    while time.monotonic() - began < limit_s:
        busy_before, total_before = _machine_cpu()
        time.sleep(0.2)
        busy_after, total_after = _machine_cpu()
        total = total_after - total_before
        if total and (busy_after - busy_before) / total < busy_below:
            break
    return time.monotonic() - began


def serve_round(
    database: Database,
    round_number: int,
    shapes: Sequence[str],
    wrk: str,
    token: str,
    workdir: Path,
    args: argparse.Namespace,
    report: Callable[[Run], None],
) -> Serving:
    log = workdir / f"serve-{database.kind}-{round_number}.log"
    command = [sys.executable, "-m", "healthdock_mirror", "serve", "--no-scheduler"]
    base_url = f"http://{args.host}:{args.port}"
    env = service_env(database.url, token, args)
    loadavg = os.getloadavg()
    with running_server(command, env, REPOSITORY, args.host, args.port, log) as process:
        if PAGE_TWO in shapes and PAGE_TWO not in database.paths:
            add_second_pages(database, args, token)
        for shape in shapes:
            paths_file = database.paths_file(shape)
            if not database.paths.get(shape):
                raise BenchError(f"{database.kind}: no paths for {shape}")
            quiesce()
            warmup = (
                run_wrk(wrk, base_url, paths_file, token, args, args.warmup)
                if args.warmup > 0
                else None
            )
            quiesce()
            server_before, machine_before = _process_cpu_seconds(process.pid), _machine_cpu()
            measured = run_wrk(wrk, base_url, paths_file, token, args, args.duration)
            server_after, machine_after = _process_cpu_seconds(process.pid), _machine_cpu()
            busy, total = (a - b for a, b in zip(machine_after, machine_before, strict=True))
            report(
                Run(
                    database.kind,
                    round_number,
                    shape,
                    measured,
                    warmup,
                    100 * (server_after - server_before) / measured.duration_s,
                    100 * busy / total if total else 0.0,
                )
            )
    problems = [
        line
        for line in log.read_text(errors="replace").splitlines()
        if any(p in line for p in LOG_PROBLEMS)
    ]
    return Serving(database.kind, round_number, problems, process.returncode, loadavg)


# --- EXPLAIN ---------------------------------------------------------------------------------


@dataclass
class Explained:
    database: str
    shape: str
    path: str
    statement: str
    parameters: str
    plan: str


_RESOURCES = {"Patient": Resource.PATIENT, "Appointment": Resource.APPOINTMENT}


def explain(database: Database, shape: str, path: str) -> Explained:
    """The plan of the SQL the search of ``path`` runs: parsed and run as the server does
    (fhir_r4.parse_search, mirror.search), the statement captured, then explained as is.
    PostgreSQL: EXPLAIN (ANALYZE, BUFFERS); SQLite: EXPLAIN QUERY PLAN."""
    parts = urlsplit(path)
    resource = _RESOURCES[parts.path.rsplit("/", 1)[-1]]
    # The base only decides absolute references, which no shape uses.
    context = SearchContext(ZoneInfo(DEFAULT_TIMEZONE), "http://127.0.0.1/fhir")
    asked = parse_search(resource, parse_qsl(parts.query, keep_blank_values=True), context)
    engine = create_mirror_engine(database.url)
    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.connect() as connection:
            search.search_records(
                connection, resource, asked.criteria, after=asked.after, limit=asked.count + 1
            )
            statement, parameters = captured[-1]
            prefix = (
                "EXPLAIN (ANALYZE, BUFFERS) "
                if database.kind == "postgres"
                else "EXPLAIN QUERY PLAN "
            )
            rows = connection.exec_driver_sql(prefix + statement, parameters).all()
    finally:
        engine.dispose()
    if database.kind == "postgres":
        plan = "\n".join(str(row[0]) for row in rows)
    else:
        plan = "\n".join(f"{row[0]}<-{row[1]}: {row[3]}" for row in rows)
    return Explained(database.kind, shape, path, statement, repr(parameters), plan)


# --- export ----------------------------------------------------------------------------------


@dataclass
class Export:
    database: str
    command: str
    wall_s: float
    cpu_s: float
    returncode: int
    max_rss_kib: int
    hwm_kib: int | None
    rss_samples: list[tuple[float, int]]
    resources: dict[str, int]
    bytes_written: int
    output_tail: str

    @property
    def total(self) -> int:
        return sum(self.resources.values())


# The command's lines "DIR/Patient.ndjson: 1000 resources" (and Appointment, deleted).
_EXPORTED = re.compile(r"(Patient|Appointment)\.ndjson: (\d+) resources\s*$")


def run_export(database: Database, args: argparse.Namespace, workdir: Path) -> Export:
    """``healthdock-mirror export fhir`` over the whole mirror, into a directory deleted after."""
    parent = Path(tempfile.mkdtemp(prefix="fhir-export-", dir=args.export_dir))
    out = parent / "out"
    command = [str(BIN / "healthdock-mirror"), "export", "fhir", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHDOCK_")}
    env["HEALTHDOCK_DATABASE_URL"] = database.url
    try:
        measured = run_measured(
            command,
            env,
            REPOSITORY,
            workdir / f"export-{database.kind}.log",
            args.export_timeout,
            shown_env={"HEALTHDOCK_DATABASE_URL": database.url},
            sample_every_s=2.0,
        )
        written = sum(f.stat().st_size for f in out.glob("*.ndjson")) if out.exists() else 0
    finally:
        shutil.rmtree(parent, ignore_errors=True)  # gigabytes of patient-shaped data
    resources = {
        m[1]: int(m[2])
        for line in measured.stdout_tail.splitlines()
        if (m := _EXPORTED.search(line))
    }
    if measured.returncode != 0 or measured.timed_out:
        raise BenchError(f"export on {database.kind} failed:\n{measured.stdout_tail}")
    return Export(
        database.kind,
        measured.command,
        measured.wall_s,
        measured.cpu_s,
        measured.returncode,
        measured.max_rss_kib,
        measured.hwm_kib,
        measured.rss_samples,
        resources,
        written,
        measured.stdout_tail,
    )


# --- report ----------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(
    runs: Sequence[Run], databases: Sequence[Database], shapes: Sequence[str]
) -> list[dict[str, Any]]:
    rows = []
    for database in databases:
        for shape in shapes:
            mine = [r for r in runs if r.database == database.kind and r.shape == shape]
            good = [r for r in mine if not r.failed and not r.stalled]
            measured = [r.measured for r in good]
            requests = sum(m.requests for m in measured)
            rows.append(
                {
                    "database": database.kind,
                    "shape": shape,
                    "paths": len(database.paths.get(shape, [])),
                    "runs": len(mine),
                    "failed_runs": sum(1 for r in mine if r.failed),
                    "stalled_runs": sum(1 for r in mine if r.stalled and not r.failed),
                    "median_p50_ms": _median([m.p50_ms for m in measured]),
                    "median_p99_ms": _median([m.p99_ms for m in measured]),
                    "median_rps": _median([m.requests_per_s for m in measured]),
                    "max_ms": max((m.max_ms for m in measured), default=float("nan")),
                    "empty_share": sum(m.empty for m in measured) / requests if requests else 0.0,
                    "non200": sum(
                        w.non200 for r in mine for w in (r.measured, r.warmup) if w is not None
                    ),
                    "socket_errors": sum(
                        sum(w.socket_errors.values())
                        for r in mine
                        for w in (r.measured, r.warmup)
                        if w is not None
                    ),
                    "median_server_cpu_pct": _median([r.server_cpu_pct for r in good]),
                    "median_machine_busy_pct": _median([r.machine_busy_pct for r in good]),
                }
            )
    return rows


def _table(header: Sequence[str], align: str, body: Sequence[Sequence[object]]) -> list[str]:
    """Markdown table lines; ``align`` has one letter per column, l or r."""
    rule = ["---:" if a == "r" else "---" for a in align]
    lines: list[Sequence[object]] = [header, rule, *body]
    return ["| " + " | ".join(str(cell) for cell in line) + " |" for line in lines]


def is_slow(row: dict[str, Any], slow_ms: float) -> bool:
    return bool(row["stalled_runs"] > 0 or row["median_p99_ms"] > slow_ms)


def _rps(value: float) -> str:
    return "-" if value != value else f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def markdown(
    rows: Sequence[dict[str, Any]],
    kinds: Sequence[str],
    shapes: Sequence[str],
    slow_ms: float,
    duration_s: float,
) -> str:
    """One row a shape, p50 / p99 / req/s per database side by side."""
    label = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    by_key = {(row["database"], row["shape"]): row for row in rows}
    requests = {shape.name: shape.request for shape in SHAPES}
    header = ["shape", "request", "paths"]
    for kind in kinds:
        header += [f"{label[kind]} p50 ms", f"{label[kind]} p99 ms", f"{label[kind]} req/s"]
    body = []
    notes = []
    for shape in shapes:
        # A bare "|" ends a table cell even inside backticks (GitHub's tables).
        request = requests[shape].replace("|", "\\|")
        line: list[object] = [shape, f"`{request}`"]
        line.append("/".join(str(by_key[(k, shape)]["paths"]) for k in kinds))
        for kind in kinds:
            row = by_key[(kind, shape)]
            if row["failed_runs"] == row["runs"]:
                line += ["FAILED", "FAILED", "-"]
            elif row["failed_runs"] + row["stalled_runs"] == row["runs"]:
                line += [f"> {duration_s:g} s", f"> {duration_s:g} s", "0"]
            else:
                line += [
                    _ms(row["median_p50_ms"]),
                    _ms(row["median_p99_ms"]),
                    _rps(row["median_rps"]),
                ]
            if row["failed_runs"]:
                notes.append(
                    f"- {kind} {shape}: {row['failed_runs']} of {row['runs']} run(s) "
                    f"FAILED ({row['non200']} non-200, {row['socket_errors']} socket errors "
                    "or timeouts), left out of the medians"
                )
            if row["stalled_runs"]:
                notes.append(
                    f"- {kind} {shape}: in {row['stalled_runs']} of {row['runs']} run(s) no "
                    f"request finished within the {duration_s:g} s: left out of the medians"
                )
            elif is_slow(row, slow_ms):
                notes.append(f"- slow: {kind} {shape}, median p99 {row['median_p99_ms']:.0f} ms")
            if row["empty_share"] > 0.05 and shape not in READS:
                notes.append(
                    f"- {kind} {shape}: {row['empty_share']:.0%} of answers matched nothing"
                )
        body.append(line)
    align = "lll" + "rrr" * len(kinds)
    return "\n".join([*_table(header, align, body), *(["", *notes] if notes else [])])


def per_round(runs: Sequence[Run]) -> str:
    body = [
        [
            r.database,
            r.round,
            r.shape,
            _ms(r.measured.p50_ms),
            _ms(r.measured.p99_ms),
            _rps(r.measured.requests_per_s),
            r.measured.non200 + (r.warmup.non200 if r.warmup else 0),
            f"{r.server_cpu_pct:.0f}%",
            f"{r.machine_busy_pct:.0f}%",
        ]
        for r in runs
    ]
    header = [
        "database",
        "round",
        "shape",
        "p50 ms",
        "p99 ms",
        "req/s",
        "non-200",
        "server CPU",
        "machine busy",
    ]
    return "\n".join(_table(header, "lrlrrrrrr", body))


def export_table(exports: Sequence[Export]) -> str:
    body = [
        [
            e.database,
            f"{e.resources.get('Patient', 0):,}",
            f"{e.resources.get('Appointment', 0):,}",
            f"{e.wall_s:.1f}",
            f"{e.total / e.wall_s:,.0f}" if e.wall_s else "-",
            f"{e.max_rss_kib / 1024:.0f}",
            f"{e.cpu_s:.1f}",
            f"{e.bytes_written / 2**20:,.0f}",
        ]
        for e in exports
    ]
    header = [
        "database",
        "Patient",
        "Appointment",
        "time s",
        "resources/s",
        "peak RSS MiB",
        "CPU s",
        "output MiB",
    ]
    return "\n".join(_table(header, "lrrrrrrr", body))


def _commit() -> str:
    def git(*arguments: str) -> str:
        done = subprocess.run(
            ["git", *arguments], cwd=REPOSITORY, capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    return (
        f"{head} (working tree with uncommitted changes)" if git("status", "--porcelain") else head
    )


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fhir.run",
        description="FHIR read/search latency on seeded mirrors, and the bulk export.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--sqlite", default="/tmp/fhir_bench.db", help="seeded SQLite file or URL")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/fhir_bench",
        help="seeded PostgreSQL database",
    )
    parser.add_argument(
        "--databases", default="sqlite,postgres", help="comma-separated: sqlite, postgres"
    )
    parser.add_argument(
        "--shapes", default=",".join(SHAPE_NAMES), help="comma-separated query shapes"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds over both databases")
    parser.add_argument("--duration", type=float, default=5, help="seconds measured per shape")
    parser.add_argument(
        "--warmup", type=float, default=1, help="seconds of unmeasured load before each (0: none)"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (-t)")
    parser.add_argument("--connections", type=int, default=4, help="wrk connections (-c)")
    parser.add_argument("--timeout", type=float, default=10, help="wrk's request timeout, s")
    parser.add_argument("--paths", type=int, default=500, help="distinct paths per shape, at most")
    parser.add_argument(
        "--sample", type=int, default=2000, help="records sampled per table to build paths from"
    )
    parser.add_argument("--seed", type=int, default=0, help="the sampling's random seed")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8160)
    parser.add_argument(
        "--export",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time `healthdock-mirror export fhir` once per database",
    )
    parser.add_argument(
        "--export-dir", type=Path, help="where the export's (deleted) output goes (default: temp)"
    )
    parser.add_argument("--export-timeout", type=float, default=3600, help="seconds")
    parser.add_argument(
        "--slow-ms", type=float, default=100, help="explain every shape whose median p99 is over"
    )
    parser.add_argument(
        "--explain",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"print EXPLAIN of slow shapes and, on PostgreSQL, of {', '.join(EXPLAINED)}",
    )
    parser.add_argument("--workdir", type=Path, help="logs and path files (default: a temp dir)")
    parser.add_argument("--keep-workdir", action="store_true")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="directory for the JSON results"
    )
    args = parser.parse_args(argv)
    args.database_list = [d.strip() for d in args.databases.split(",") if d.strip()]
    unknown = set(args.database_list) - set(DATABASES)
    if unknown or not args.database_list:
        parser.error(f"--databases: unknown {sorted(unknown)}; use sqlite and/or postgres")
    args.shape_list = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = set(args.shape_list) - set(SHAPE_NAMES)
    if unknown or not args.shape_list:
        parser.error(f"--shapes: unknown {sorted(unknown)}; use {', '.join(SHAPE_NAMES)}")
    if args.threads < 1 or args.connections < args.threads or args.rounds < 1 or args.duration <= 0:
        parser.error(
            "need --threads >= 1, --connections >= --threads, --rounds >= 1, --duration > 0"
        )
    return args


@contextmanager
def _workdir(args: argparse.Namespace) -> Iterator[Path]:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-fhir-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        yield workdir
    finally:
        if not args.keep_workdir and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    unwind_on_signals()
    command_line = shlex.join(
        [sys.executable, "-m", "bench.fhir.run", *(argv if argv is not None else sys.argv[1:])]
    )
    print(f"Command: {command_line}", flush=True)
    commit = _commit()
    print(f"Commit: {commit}", flush=True)
    wrk = ensure_wrk()
    wrk_version = subprocess.run(
        [wrk, "-v"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[:1]
    token = secrets.token_urlsafe(32)  # the bootstrap token of this run's servers only
    urls = {"sqlite": _database_url("sqlite", args.sqlite), "postgres": args.postgres}
    databases = [Database(kind, urls[kind]) for kind in args.database_list]
    environment: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": wrk_version[0] if wrk_version else "?",
        "loadavg_at_start": os.getloadavg(),
    }
    runs: list[Run] = []
    servings: list[Serving] = []
    explained: list[Explained] = []
    exports: list[Export] = []
    interrupted = False
    failure: str | None = None

    def report(run: Run) -> None:
        runs.append(run)
        m = run.measured
        verdict = (
            f"FAILED: {m.first_error[:200]}"
            if run.failed
            else "STALLED: no request finished"
            if run.stalled
            else "ok"
        )
        print(
            f"{run.database} round {run.round} {run.shape}: p50 {_ms(m.p50_ms)} ms, "
            f"p99 {_ms(m.p99_ms)} ms, {_rps(m.requests_per_s)} req/s, {m.paths} paths, "
            f"{m.empty} empty; {verdict}",
            flush=True,
        )

    with _workdir(args) as workdir:
        try:
            for database in databases:
                check_database(database)
                prepare_paths(database, args, workdir)
                print(
                    f"{database.kind}: {database.live['patients']:,} live patients, "
                    f"{database.live['appointments']:,} live appointments; sampled in "
                    f"{database.sample_seconds:.1f} s",
                    flush=True,
                )
                if database.kind == "postgres":
                    environment["postgres"] = pg_settings(database.url)
            for round_number in range(1, args.rounds + 1):
                # The order flips each round, so drift (caches, autovacuum) hurts neither.
                order = databases if round_number % 2 else list(reversed(databases))
                for database in order:
                    servings.append(
                        serve_round(
                            database,
                            round_number,
                            args.shape_list,
                            wrk,
                            token,
                            workdir,
                            args,
                            report,
                        )
                    )
            rows = summarize(runs, databases, args.shape_list)
            if args.explain:
                for database in databases:
                    slow = {
                        r["shape"]
                        for r in rows
                        if r["database"] == database.kind and is_slow(r, args.slow_ms)
                    }
                    chosen = slow | (set(EXPLAINED) if database.kind == "postgres" else set())
                    for shape in args.shape_list:
                        if shape in chosen and shape not in READS and database.paths.get(shape):
                            explained.append(explain(database, shape, database.paths[shape][0]))
            if args.export:
                for database in databases:
                    print(f"exporting {database.kind} ...", flush=True)
                    exports.append(run_export(database, args, workdir))
        except KeyboardInterrupt:
            interrupted = True
            print("\ninterrupted; reporting what finished", file=sys.stderr)
        except BenchError as error:
            failure = str(error)
            print(f"\nbenchmark stopped: {failure}", file=sys.stderr)

    rows = summarize(runs, databases, args.shape_list)
    kinds = [d.kind for d in databases]
    sections = [
        f"Command: `{command_line}`",
        f"Commit: {commit}",
        "wrk: `" + (shlex.join(runs[-1].measured.command) if runs else "(no run)") + "`",
        f"Medians over {args.rounds} round(s) of {args.duration:g} s per shape "
        f"(after {args.warmup:g} s of warm-up), {args.connections} connections:",
        markdown(rows, kinds, args.shape_list, args.slow_ms, args.duration),
        per_round(runs),
    ]
    if exports:
        sections += [
            "Export (`healthdock-mirror export fhir DIR`, once per database):",
            export_table(exports),
        ]
    for item in explained:
        sections.append(
            f"EXPLAIN on {item.database}, {item.shape} (`{item.path}`):\n\n```\n{item.plan}\n```"
        )
    if servings:
        loads = ", ".join(
            f"{s.database} round {s.round} {s.loadavg_before[0]:.2f}" for s in servings
        )
        sections.append(f"1-minute load average as each server started: {loads}")
    for serving in servings:
        if serving.log_problems:
            sections.append(
                f"NOTE: {len(serving.log_problems)} warning/error line(s) in the "
                f"{serving.database} server log of round {serving.round}, first: "
                f"{serving.log_problems[0][:300]}"
            )
    print()
    print("\n\n".join(sections))

    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.results / f"fhir-{stamp}.json"
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out.write_text(
        json.dumps(
            {
                "command": command_line,
                "commit": commit,
                "settings": settings,
                "environment": environment,
                "interrupted": interrupted,
                "failure": failure,
                "databases": [
                    {
                        "kind": d.kind,
                        "revision": d.revision,
                        "live": d.live,
                        "sample_seconds": d.sample_seconds,
                        "paths": d.paths,
                    }
                    for d in databases
                ],
                "summary": rows,
                "runs": [asdict(r) for r in runs],
                "servings": [asdict(s) for s in servings],
                "exports": [{**asdict(e), "total": e.total} for e in exports],
                "explained": [asdict(e) for e in explained],
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    print(f"\nraw results: {out}")
    if interrupted:
        return 130
    if failure or any(r.failed for r in runs):
        return 1
    return 0


if __name__ == "__main__":
    with suppress(BrokenPipeError):
        sys.exit(main())
