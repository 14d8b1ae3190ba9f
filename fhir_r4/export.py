"""``healthdock-mirror export fhir DIR``: the mirror's live records as FHIR bulk-data files,
``Patient.ndjson`` and ``Appointment.ndjson``, one resource a line.

Streamed: records are read in id order a batch at a time inside one read transaction (one
consistent snapshot per file on PostgreSQL) and written as they come, so memory stays flat
however large the mirror. Each file is written under a temporary name and renamed when
complete: a file with the final name is always whole.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from fhir_r4.mapping import (
    FHIR_ID_CHARACTERS,
    FHIR_ID_LENGTH,
    appointment_resource,
    patient_resource,
)
from fhir_r4.search_params import resource_name
from mirror import Resource, read_transaction, search

# (exported so far, of how many): a progress bar's update.
Progress = Callable[[Resource, int, int], None]
_BATCH = 1000


@dataclass(frozen=True, slots=True)
class ExportedFile:
    resource: Resource
    path: Path
    resources: int


def _criteria(since: datetime | None) -> list[search.Criterion]:
    criteria: list[search.Criterion] = [(search.IdShape(FHIR_ID_CHARACTERS, FHIR_ID_LENGTH),)]
    if since is not None:
        # Changed in the mirror after the instant: a late webhook's change is not missed by
        # a consumer that exports from its last export's start (meta.lastUpdated could be older).
        criteria.append((search.Between("mirrored_at", since, None),))
    return criteria


def _export_one(
    connection: Connection,
    resource: Resource,
    directory: Path,
    zone: ZoneInfo,
    since: datetime | None,
    progress: Progress,
) -> ExportedFile:
    criteria = _criteria(since)
    total = search.count_records(connection, resource, criteria)
    path = directory / f"{resource_name(resource)}.ndjson"
    partial = path.with_name(f".{path.name}.partial")
    encoder = msgspec.json.Encoder()
    written = 0
    progress(resource, 0, total)
    with partial.open("wb") as out:
        for record in search.iter_records(connection, resource, criteria, batch=_BATCH):
            if resource is Resource.PATIENT:
                document = patient_resource(record)
            else:
                document = appointment_resource(record, zone)
            out.write(encoder.encode(document) + b"\n")
            written += 1
            if written % _BATCH == 0:
                progress(resource, written, max(total, written))
        out.flush()
        os.fsync(out.fileno())
    partial.replace(path)
    progress(resource, written, max(total, written))
    return ExportedFile(resource, path, written)


def export_fhir(
    engine: Engine,
    directory: Path,
    *,
    zone: ZoneInfo,
    since: datetime | None = None,
    progress: Progress = lambda resource, done, total: None,
) -> list[ExportedFile]:
    """Write ``Patient.ndjson`` and ``Appointment.ndjson`` into ``directory`` (created if
    absent): every live record, or those the mirror changed after ``since``."""
    directory.mkdir(parents=True, exist_ok=True)
    return [
        read_transaction(
            engine,
            functools.partial(
                _export_one,
                resource=resource,
                directory=directory,
                zone=zone,
                since=since,
                progress=progress,
            ),
        )
        for resource in Resource
    ]
