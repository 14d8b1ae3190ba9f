"""``healthdock-mirror token ...`` and ``healthdock-mirror audit``: named tokens and the trail.

A token is printed once, at creation, and never again (only its hash is kept). Creating and
revoking are audited like the console's actions, with the operating-system user as the actor
(``cli:<user>``): whoever runs the command line holds every role already.
"""

from __future__ import annotations

import functools
import getpass
import json
import sys
from datetime import datetime
from typing import Any

import click
from sqlalchemy import Engine

from healthdock_mirror.context import (
    configure_logs,
    database,
    ensure_schema,
    existing_mirror,
    settings_or_exit,
)
from healthdock_mirror.context import instant as instant_option
from mirror import (
    ADMIN_ROLE,
    AuditAction,
    AuditOutcome,
    Role,
    Selection,
    read_transaction,
    tokens,
    write_transaction,
)
from mirror import (
    audit as audit_trail,
)

_CLIENT = "command line"


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a container, say)
        return "cli"


def cli_entry(action: AuditAction, target: str, outcome: AuditOutcome) -> audit_trail.AuditEntry:
    """An audit row for the command line's operator."""
    return audit_trail.AuditEntry(_actor(), ADMIN_ROLE, action, target, _CLIENT, outcome)


def record_cli_action(engine: Engine, action: AuditAction, target: str) -> None:
    """An operator's action from the command line, on the trail (committed) before it runs."""
    entry = cli_entry(action, target, AuditOutcome.OK)
    write_transaction(engine, functools.partial(audit_trail.record_audit, entry=entry))


def describe_selection(selection: Selection) -> str:
    """A replay selection as the trail shows it (ids, types, statuses, times: no values)."""
    parts = []
    if selection.everything:
        parts.append("every stored event")
    named = (("seq", selection.seqs), ("event id", selection.event_ids),
             ("type", selection.event_types), ("status", selection.statuses))  # fmt: skip
    for name, values in named:
        if values:
            parts.append(f"{name} {','.join(map(str, values))}")
    if selection.source:
        parts.append(f"source {selection.source}")
    if selection.since:
        parts.append(f"since {_iso(selection.since)}")
    if selection.until:
        parts.append(f"until {_iso(selection.until)}")
    return ", ".join(parts)


@click.group()
def token() -> None:
    """Named API tokens with roles: viewer (console), operator (console and its actions),
    feed (GET /events). HEALTHDOCK_ADMIN_TOKEN stays the bootstrap token with every role."""


@token.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice([role.value for role in Role]))
def create_token(name: str, role: str) -> None:
    """Create the token NAME; it is printed once, on standard output."""
    settings = settings_or_exit()
    configure_logs(settings)
    ensure_schema(settings)

    def create(connection: Any) -> str:
        secret = tokens.create_token(connection, name, Role(role))
        target = f"token {name} ({role})"
        audit_trail.record_audit(connection, cli_entry(AuditAction.TOKEN_CREATE, target,
                                                    AuditOutcome.OK))  # fmt: skip
        return secret

    with database(settings) as engine:
        try:
            secret = write_transaction(engine, create)
        except tokens.TokenError as error:
            raise click.ClickException(str(error)) from None
    click.echo(f"created {name} ({role}); the token is shown this once:", err=True)
    click.echo(secret)


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
def list_tokens(as_json: bool) -> None:
    """Every named token, its role and whether it is revoked (never the token itself)."""
    settings = settings_or_exit()
    configure_logs(settings)
    existing_mirror(settings)
    with database(settings) as engine:
        found = read_transaction(engine, tokens.list_tokens)
    if as_json:
        click.echo(json.dumps([
            {"name": t.name, "role": t.role, "created_at": _iso(t.created_at),
             "revoked_at": None if t.revoked_at is None else _iso(t.revoked_at)}
            for t in found
        ], indent=2))  # fmt: skip
        return
    if not found:
        click.echo("no named tokens (create one with `healthdock-mirror token create`)")
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="tokens")
    for column in ("name", "role", "created", "revoked"):
        table.add_column(column)
    for t in found:
        revoked = "-" if t.revoked_at is None else _iso(t.revoked_at)
        table.add_row(*(Text(cell) for cell in (t.name, t.role, _iso(t.created_at), revoked)))
    Console(width=None if sys.stdout.isatty() else 140).print(table)


@token.command("revoke")
@click.argument("name")
def revoke_token(name: str) -> None:
    """Revoke the token NAME: refused from its next request on, its console sessions ended."""
    settings = settings_or_exit()
    configure_logs(settings)
    existing_mirror(settings)

    def revoke(connection: Any) -> bool:
        revoked = tokens.revoke_token(connection, name)
        outcome = AuditOutcome.OK if revoked else AuditOutcome.FAILED
        audit_trail.record_audit(connection, cli_entry(AuditAction.TOKEN_REVOKE, f"token {name}",
                                                    outcome))  # fmt: skip
        return revoked

    with database(settings) as engine:
        revoked = write_transaction(engine, revoke)
    if not revoked:
        raise click.ClickException(f"no live token named {name!r} (see `token list`)")
    click.echo(f"revoked {name}")


@click.command()
@click.option(
    "--since", callback=instant_option, help="Rows at or after (ISO 8601; UTC if no zone)."
)
@click.option("--until", callback=instant_option, help="Rows before (ISO 8601; UTC if no zone).")
@click.option("--actor", help="Only this token's name (or cli:<user>).")
@click.option(
    "--action", "actions", multiple=True, type=click.Choice([a.value for a in AuditAction]),
    help="Only this action (repeatable).",
)  # fmt: skip
@click.option("--limit", type=click.IntRange(1, 100_000), default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
def audit(
    since: datetime | None,
    until: datetime | None,
    actor: str | None,
    actions: tuple[str, ...],
    limit: int,
    as_json: bool,
) -> None:
    """The audit trail, newest first: who read patient data and who changed what."""
    settings = settings_or_exit()
    configure_logs(settings)
    existing_mirror(settings)
    read = functools.partial(audit_trail.read_audit, since=since, until=until, actor=actor,
                             actions=actions, limit=limit)  # fmt: skip
    with database(settings) as engine:
        rows = read_transaction(engine, read)
    if as_json:
        click.echo(json.dumps([
            {"id": r.id, "at": _iso(r.at), "actor": r.actor, "role": r.role, "action": r.action,
             "target": r.target, "client": r.client, "outcome": r.outcome}
            for r in rows
        ], indent=2))  # fmt: skip
        return
    if not rows:
        click.echo("no audit rows match")
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"audit trail ({len(rows)} rows, newest first)")
    for column in ("at", "actor", "role", "action", "target", "client", "outcome"):
        table.add_column(column)
    for r in rows:
        # As text, not markup: a target holds what a client typed (a filter, an id).
        cells = (_iso(r.at), r.actor, r.role, r.action, r.target or "", r.client or "", r.outcome)
        table.add_row(*(Text(cell) for cell in cells))
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
