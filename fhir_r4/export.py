"""``healthdock-mirror export fhir DIR``: the mirror as FHIR bulk-data files.

``Patient.ndjson`` and ``Appointment.ndjson`` hold one resource a line: every live record, or
with ``since`` those the mirror changed after it; ``deleted.ndjson`` the records deleted
upstream since then, as bulk data's transaction Bundles of ``DELETE`` entries (empty without
``since``); ``manifest.json`` what was written and the ``transactionTime`` to pass as the next
``since``, so that an incremental consumer misses nothing.

Streamed: records are read in id order a batch at a time inside one read-only transaction
that sees one snapshot for every file, and written as they come, so memory stays flat however
large the mirror. The files are written in a directory of their own and moved into ``DIR``
together once all are whole; an export that fails leaves ``DIR`` as it was.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from fhir_r4.mapping import (
    FHIR_ID_CHARACTERS,
    FHIR_ID_LENGTH,
    appointment_resource,
    instant,
    patient_resource,
)
from fhir_r4.search_params import resource_name
from mirror import Resource, search, snapshot_transaction

# (file, exported so far, of how many): a progress bar's update.
Progress = Callable[[str, int, int], None]
_BATCH = 1000
DELETED_FILE = "deleted.ndjson"
MANIFEST_FILE = "manifest.json"
# mirrored_at is stamped when a writer's transaction applies a change, and it commits a moment
# later: a change stamped just before the snapshot may commit just after it. The next export
# starts this much earlier (writers' transactions last milliseconds; a lock wait, seconds).
_COMMIT_MARGIN = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class ExportedFile:
    name: str  # Patient.ndjson, Appointment.ndjson or deleted.ndjson
    path: Path
    resources: int


@dataclass(frozen=True, slots=True)
class Export:
    files: list[ExportedFile]
    transaction_time: datetime  # the next export's --since: it misses nothing written since


def _criteria(since: datetime | None) -> list[search.Criterion]:
    criteria: list[search.Criterion] = [(search.IdShape(FHIR_ID_CHARACTERS, FHIR_ID_LENGTH),)]
    if since is not None:
        # Changed in the mirror after the instant: a late webhook's change is not missed by
        # a consumer that exports from its last export's transactionTime (meta.lastUpdated,
        # HealthDock's own instant, could be older than that).
        criteria.append((search.Between("mirrored_at", since, None),))
    return criteria


def _write(
    path: Path, name: str, lines: Iterator[bytes], total: int, progress: Progress
) -> ExportedFile:
    written = 0
    progress(name, 0, total)
    with path.open("wb") as out:
        for line in lines:
            out.write(line + b"\n")
            written += 1
            if written % _BATCH == 0:
                progress(name, written, max(total, written))
        out.flush()
        os.fsync(out.fileno())
    progress(name, written, max(total, written))
    return ExportedFile(name, path, written)


def _resources(
    connection: Connection, resource: Resource, criteria: list[search.Criterion], zone: ZoneInfo
) -> Iterator[bytes]:
    encoder = msgspec.json.Encoder()
    for record in search.iter_records(connection, resource, criteria, batch=_BATCH):
        if resource is Resource.PATIENT:
            yield encoder.encode(patient_resource(record))
        else:
            yield encoder.encode(appointment_resource(record, zone))


def _deletions(connection: Connection, criteria: list[search.Criterion]) -> Iterator[bytes]:
    encoder = msgspec.json.Encoder()
    for resource in Resource:
        records = search.iter_records(connection, resource, criteria, batch=_BATCH,
                                      tombstoned=True)  # fmt: skip
        for record in records:
            entry = {
                "request": {"method": "DELETE", "url": f"{resource_name(resource)}/{record.id}"}
            }
            yield encoder.encode(
                {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
            )


def _export_all(
    connection: Connection,
    staging: Path,
    zone: ZoneInfo,
    since: datetime | None,
    progress: Progress,
) -> list[ExportedFile]:
    criteria = _criteria(since)
    files = []
    for resource in Resource:
        name = f"{resource_name(resource)}.ndjson"
        total = search.count_records(connection, resource, criteria)
        files.append(_write(staging / name, name, _resources(connection, resource, criteria, zone),
                            total, progress))  # fmt: skip
    deleted: Iterator[bytes] = iter(())
    total = 0
    if since is not None:
        deleted = _deletions(connection, criteria)
        total = sum(
            search.count_records(connection, r, criteria, tombstoned=True) for r in Resource
        )
    files.append(_write(staging / DELETED_FILE, DELETED_FILE, deleted, total, progress))
    return files


def _manifest(files: list[ExportedFile], transaction_time: datetime, since: datetime | None) -> Any:
    """Bulk data's manifest, its URLs relative to the directory."""
    outputs = [f for f in files if f.name != DELETED_FILE]
    deleted = [f for f in files if f.name == DELETED_FILE]
    return {
        "transactionTime": instant(transaction_time),
        "since": None if since is None else instant(since.astimezone(UTC)),
        "requiresAccessToken": False,
        "output": [{"type": f.name.removesuffix(".ndjson"), "url": f.name, "count": f.resources}
                   for f in outputs],
        "deleted": [{"type": "Bundle", "url": f.name, "count": f.resources} for f in deleted],
        "error": [],
    }  # fmt: skip


def export_fhir(
    engine: Engine,
    directory: Path,
    *,
    zone: ZoneInfo,
    since: datetime | None = None,
    progress: Progress = lambda name, done, total: None,
) -> Export:
    """Write the export's files into ``directory`` (created if absent), replacing those of an
    earlier export there only once every new one is whole."""
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=directory))
    try:
        # Taken before the snapshot: whatever committed before it began is in this export.
        transaction_time = datetime.now(UTC) - _COMMIT_MARGIN
        work = functools.partial(_export_all, staging=staging, zone=zone, since=since,
                                 progress=progress)  # fmt: skip
        written = snapshot_transaction(engine, work)
        manifest = _manifest(written, transaction_time, since)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        # The manifest last: a reader that finds it finds the files it names.
        for name in [*(f.name for f in written), MANIFEST_FILE]:
            (staging / name).replace(directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = [ExportedFile(f.name, directory / f.name, f.resources) for f in written]
    return Export(files, transaction_time)
