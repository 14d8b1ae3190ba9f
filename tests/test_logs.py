"""config/logs.py, the logging every process of the service sets up, each in a fresh Python
process (under pytest the root logger already has handlers, which logging.basicConfig keeps)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from config.logs import MASK

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-admin-token-value"
PASSWORD = "db-password-xyz"


def _logged(level: str, log_format: str, program: str) -> str:
    """What ``program`` writes to stderr after ``configure_logging(level, log_format)``, with
    the two secrets above configured."""
    setup = (
        "import logging\n"
        "from config import LogOptions, configure_logging\n"
        f"configure_logging(LogOptions({level!r}, {log_format!r}, ({TOKEN!r}, {PASSWORD!r}, '')))\n"
        "library = logging.getLogger('some.library')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", setup + program],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return run.stderr


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_secret_is_masked_wherever_a_line_would_show_it(log_format: str) -> None:
    """No code of ours logs a secret; should a library at DEBUG do so (a request's headers, a
    connection string, an exception's text), the line shows the mask instead."""
    logged = _logged(
        "DEBUG",
        log_format,
        f"library.debug('< headers %s', [(b'authorization', b'Bearer {TOKEN}')])\n"
        f"library.warning('connecting', extra={{'dsn': 'postgresql://u:{PASSWORD}@db/x'}})\n"
        "try:\n"
        f"    raise ValueError('refused {TOKEN}')\n"
        "except ValueError:\n"
        "    library.exception('request failed')\n"
        "library.info('seq 12 applied')\n",
    )
    assert TOKEN not in logged
    assert PASSWORD not in logged
    # The headers, the exception; and in JSON, which prints extras, the connection string.
    assert logged.count(MASK) == (3 if log_format == "json" else 2), logged
    assert "seq 12 applied" in logged
    if log_format == "json":
        lines = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
        assert [line["level"] for line in lines] == ["DEBUG", "WARNING", "ERROR", "INFO"]
        assert MASK in lines[2]["exc_info"]


def test_loggers_that_would_log_patient_data_stay_quiet_at_debug() -> None:
    """SQLAlchemy logs statement parameters at INFO and fetched rows at DEBUG; httpx logs
    URLs, whose query can hold a search term. At DEBUG they still say only warnings."""
    logged = _logged(
        "DEBUG",
        "text",
        "logging.getLogger('sqlalchemy.engine.Engine').info('[generated] (\\'Aarav\\',)')\n"
        "logging.getLogger('httpx').info('GET /v1/patients?search=Aarav')\n"
        "logging.getLogger('sqlalchemy.pool').warning('pool overflow')\n"
        "library.debug('a library at debug')\n",
    )
    assert "Aarav" not in logged
    assert "pool overflow" in logged
    assert "a library at debug" in logged


def test_a_level_above_warning_holds_the_quiet_loggers_too() -> None:
    logged = _logged(
        "ERROR",
        "text",
        "logging.getLogger('sqlalchemy.pool').warning('pool overflow')\n"
        "library.warning('a warning')\n"
        "library.error('an error')\n",
    )
    assert logged.splitlines()[-1].endswith("some.library: an error")
    assert "warning" not in logged


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_access_log_shows_paths_without_their_queries(log_format: str) -> None:
    """uvicorn's access log names each request's path; a FHIR search's query holds a patient's
    name and birth date, the OAuth callback's its code: only the path is kept."""
    access = (
        "access = logging.getLogger('uvicorn.access')\n"
        "line = '%s - \"%s %s HTTP/%s\" %d'\n"
        "access.info(line, '127.0.0.1:5000', 'GET', '/fhir/Patient?family=Sharma&birthdate=1990'"
        ", '1.1', 200)\n"
        "access.info(line, '127.0.0.1:5000', 'GET', '/oauth/callback?code=hdac_x&state=y', '1.1'"
        ", 200)\n"
        "access.info(line, '127.0.0.1:5000', 'GET', '/fhir/Patient/PAT001', '1.1', 200)\n"
    )
    logged = _logged("INFO", log_format, access)
    assert "Sharma" not in logged
    assert "1990" not in logged
    assert "hdac_x" not in logged
    assert "/fhir/Patient?[redacted]" in logged
    assert "/oauth/callback?[redacted]" in logged
    assert "/fhir/Patient/PAT001" in logged
