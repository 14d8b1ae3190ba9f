"""dlt's ``rest_api`` source loading the fake HealthDock's patients: the comparison for part (a).

Run by ``bench/sync/run.py`` as a script in its own process, like our ``healthdock-mirror sync
patients``, and timed the same way (the whole command). It imports nothing of the project.
The resource is configured as a mirror needs it: ``write_disposition="merge"`` with
``primary_key="id"``, so a second run updates rows instead of adding them (``--write-disposition
append`` gives dlt's default, which a mirror cannot use). On SQLite (dlt's ``sqlalchemy``
destination) the tables also get their PRIMARY KEY (``create_primary_keys=True``;
``--no-primary-keys`` gives dlt's default, without): without it the merge's ``DELETE ... WHERE
EXISTS (SELECT 1 FROM <staging table> WHERE id = ...)`` scans the staging table for every stored
row, so a second run's merge grows with the square of the rows (about 50 s at 40,000 patients,
against 5 s with the key). Everything else is dlt's default (sequential page fetching, one
normalize worker), apart from what the API needs: page-number pagination from page 1 with
``page``/``limit``, the total from ``data.pagination.total_pages``, the records from
``data.patients``, and a bearer token.

    python bench/sync/dlt_load.py --base-url http://127.0.0.1:8251 --api-key fake-api-key \\
        --destination sqlite:////tmp/x.db --pipelines-dir /tmp/dlt-pipelines

Set ``RUNTIME__DLTHUB_TELEMETRY=false`` in the environment (the runner does): dlt otherwise
reports every run to its telemetry endpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

RESULT_MARKER = "BENCH_RESULT "
PAGE_SIZE = 100


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="the fake's root, without /v1")
    parser.add_argument("--api-key", required=True)
    parser.add_argument(
        "--destination",
        required=True,
        help="sqlite:///<path> (dlt's sqlalchemy destination) or postgresql://... (postgres)",
    )
    parser.add_argument("--pipelines-dir", required=True, help="dlt's working directory")
    parser.add_argument("--pipeline-name", default="bench_sync")
    parser.add_argument(
        "--write-disposition",
        choices=("merge", "append"),
        default="merge",
        help="merge on primary key id (what a mirror needs; the default) or dlt's append",
    )
    parser.add_argument(
        "--primary-keys",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="SQLite: create the tables' PRIMARY KEY (dlt's create_primary_keys), which the "
        "merge's delete needs to stay linear; no effect on postgres",
    )
    parser.add_argument(
        "--dataset", default="", help="schema (postgres); default main (sqlite) / healthdock"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    import dlt
    from dlt.sources.rest_api import rest_api_source

    imported = time.monotonic()
    destination: Any
    if args.destination.startswith("sqlite"):
        # The sqlalchemy destination keeps each dataset but "main" in a file of its own.
        destination = dlt.destinations.sqlalchemy(
            credentials=args.destination, create_primary_keys=args.primary_keys
        )
        dataset = args.dataset or "main"
        primary_keys: bool | None = args.primary_keys
    else:
        destination = dlt.destinations.postgres(credentials=_with_password(args.destination))
        dataset = args.dataset or "healthdock"
        primary_keys = None  # postgres: dlt's default (create_indexes) is left as it is
    source = rest_api_source(
        {
            "client": {
                "base_url": args.base_url.rstrip("/") + "/v1/",
                "auth": {"type": "bearer", "token": args.api_key},
                "paginator": {
                    "type": "page_number",
                    "base_page": 1,
                    "page_param": "page",
                    "total_path": "data.pagination.total_pages",
                },
            },
            "resources": [
                {
                    "name": "patients",
                    "write_disposition": args.write_disposition,
                    "primary_key": "id",
                    "endpoint": {
                        "path": "patients",
                        "params": {"limit": PAGE_SIZE},
                        "data_selector": "data.patients",
                    },
                }
            ],
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name=args.pipeline_name,
        destination=destination,
        dataset_name=dataset,
        pipelines_dir=args.pipelines_dir,
    )
    info = pipeline.run(source)
    finished = time.monotonic()
    normalized = pipeline.last_trace.last_normalize_info if pipeline.last_trace else None
    rows = normalized.row_counts if normalized else {}
    print(
        RESULT_MARKER
        + json.dumps(
            {
                "dlt_version": dlt.__version__,
                "dataset": dataset,
                "write_disposition": args.write_disposition,
                "primary_keys": primary_keys,
                "import_s": imported - began,
                "run_s": finished - imported,
                "row_counts": dict(rows or {}),
                "has_failed_jobs": bool(info.has_failed_jobs),
            }
        ),
        flush=True,
    )
    return 1 if info.has_failed_jobs else 0


def _with_password(url: str) -> str:
    """dlt's postgres destination insists on a password; trust authentication (the benchmark's
    default server) never asks for it, so a URL without one gets a placeholder."""
    parts = urlsplit(url)
    if parts.password is not None or not parts.username:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:unused@{host}"))


if __name__ == "__main__":
    sys.exit(main())
