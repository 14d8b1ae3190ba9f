"""The command line's token and audit commands, as the access tests call them."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner, Result

from healthdock_mirror.cli import main


def cli(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"HEALTHDOCK_DATABASE_URL": database_url})


def create_token(database_url: str, name: str, role: str) -> str:
    """A new named token; the command prints it last, once."""
    result = cli(database_url, "token", "create", name, "--role", role)
    assert result.exit_code == 0, result.output
    return str(result.stdout.strip().splitlines()[-1])


def audit_rows(database_url: str, *args: str) -> list[dict[str, Any]]:
    result = cli(database_url, "audit", "--json", *args)
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows
