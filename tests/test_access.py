"""Named tokens with roles, and the audit trail, as an operator and a compliance officer use
them: the command line, the feed, revocation, and what the trail records."""

from __future__ import annotations

import functools
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from litestar.testing import TestClient
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError

from healthdock_mirror.cli import main
from mirror import audit as audit_trail
from mirror import sessions, tokens
from mirror.database import read_transaction, write_transaction
from mirror.schema import api_tokens, audit_log, console_sessions
from receiver import create_app
from tests.conftest import make_settings
from tests.factories import encode, event, patient, signed
from tests.support.access import audit_rows, cli
from tests.support.access import create_token as new_token
from tests.support.services import serve

BOOTSTRAP = "bootstrap-token-0123456789"


def test_a_token_is_shown_once_and_only_its_hash_is_kept(database_url: str, engine: Engine) -> None:
    secret = new_token(database_url, "analytics-feed", "feed")
    assert secret.startswith("hdm_")
    assert len(secret) > 40
    with engine.connect() as connection:
        stored = connection.execute(select(api_tokens)).one()
    assert secret not in json.dumps([str(value) for value in stored])
    listed = cli(database_url, "token", "list", "--json")
    assert json.loads(listed.stdout)[0] | {"created_at": None} == {
        "name": "analytics-feed", "role": "feed", "created_at": None, "revoked_at": None,
    }  # fmt: skip
    assert secret not in listed.stdout
    # A second token of that name, a bad name, a bad role: clear errors, nothing created.
    again = cli(database_url, "token", "create", "analytics-feed", "--role", "viewer")
    assert again.exit_code == 1
    assert "exists" in again.output
    bad = cli(database_url, "token", "create", "Bad Name!", "--role", "viewer")
    assert bad.exit_code == 1
    assert "name" in bad.output
    assert cli(database_url, "token", "create", "x", "--role", "root").exit_code == 2
    assert cli(database_url, "token", "create", "admin", "--role", "viewer").exit_code == 1
    created = audit_rows(database_url, "--action", "token.create")
    assert [(r["action"], r["target"], r["outcome"]) for r in created] == [
        ("token.create", "token analytics-feed (feed)", "ok")
    ]
    assert created[0]["actor"].startswith("cli")


def post(client: TestClient[Any], document: dict[str, Any]) -> None:
    body = encode(document)
    response = client.post("/webhooks/healthdock", content=body, headers=signed(body))
    assert response.status_code == 200, response.text


def _feed(client: TestClient[Any], token: str) -> Any:
    return client.get("/events", headers={"Authorization": f"Bearer {token}"})


def test_roles_on_the_feed_and_revocation_at_the_next_request(
    database_url: str, engine: Engine
) -> None:
    feed = new_token(database_url, "warehouse", "feed")
    viewer = new_token(database_url, "ward-viewer", "viewer")
    operator = new_token(database_url, "night-operator", "operator")
    settings = make_settings(database_url, admin_token=BOOTSTRAP)
    with TestClient(create_app(settings)) as client:
        post(client, event("patient.created", patient("PATA1")))
        assert _feed(client, feed).status_code == 200
        assert _feed(client, BOOTSTRAP).status_code == 200
        for token in (viewer, operator):
            refused = _feed(client, token)
            assert refused.status_code == 403
            assert refused.json()["success"] is False
            assert "feed role" in refused.json()["error"]["message"]
        assert _feed(client, "hdm_" + "x" * 43).status_code == 401
        assert cli(database_url, "token", "revoke", "warehouse").exit_code == 0
        after = _feed(client, feed)
        assert after.status_code == 401
        assert after.headers["WWW-Authenticate"].startswith("Bearer")
        assert feed not in after.text
    assert cli(database_url, "token", "revoke", "warehouse").exit_code == 1  # already
    reads = audit_rows(database_url, "--action", "feed.read")
    assert [(r["actor"], r["role"], r["outcome"]) for r in reversed(reads)] == [
        ("warehouse", "feed", "ok"), ("admin", "admin", "ok"),
    ]  # fmt: skip
    assert all(r["target"].startswith("seq ") for r in reads)
    assert audit_rows(database_url, "--actor", "warehouse")[0]["action"] == "feed.read"


def test_a_bootstrap_token_is_not_needed_when_named_tokens_exist(
    database_url: str, engine: Engine
) -> None:
    feed = new_token(database_url, "only-named", "feed")
    with TestClient(create_app(make_settings(database_url))) as client:
        assert _feed(client, feed).status_code == 200
        assert _feed(client, "anything").status_code == 401
        assert client.get("/events").status_code == 401


def test_a_feed_page_the_trail_could_not_record_is_not_sent(
    database_url: str, engine: Engine
) -> None:
    """Written before the data leaves: with audit_log refusing inserts, the page is a 503."""
    feed = new_token(database_url, "strict", "feed")
    with TestClient(create_app(make_settings(database_url))) as client:
        post(client, event("patient.created", patient("PATA2", first_name="Auditmarker")))
        _refuse_audit_inserts(engine)
        response = _feed(client, feed)
        assert response.status_code == 503
        assert "Auditmarker" not in response.text


def _refuse_audit_inserts(engine: Engine) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
        else:
            connection.exec_driver_sql(
                "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN RAISE EXCEPTION 'disk full'; END $$"
            )
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log "
                "FOR EACH ROW EXECUTE FUNCTION refuse_audit()"
            )


def test_the_trail_is_append_only_and_only_retention_deletes(
    database_url: str, engine: Engine
) -> None:
    new_token(database_url, "someone", "viewer")
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
        connection.execute(text("UPDATE audit_log SET actor = 'nobody'"))
    with engine.begin() as connection:
        old = audit_log.insert().values(
            at=text("CURRENT_TIMESTAMP"), actor="old", role="viewer", action="record.view",
            target="patient PAT1", client="127.0.0.1", outcome="ok",
        )  # fmt: skip
        connection.execute(old)
    assert audit_trail.prune_audit(engine, timedelta(days=1)) == 0
    assert audit_trail.prune_audit(engine, timedelta(seconds=-60)) == 2
    # Retention leaves its own row: the trail says it was cut, when, and by how much.
    [left] = read_transaction(engine, audit_trail.read_audit)
    assert (left.actor, left.action) == ("retention", "audit.prune")
    assert left.target is not None
    assert left.target.startswith("2 rows before ")


def test_prune_applies_the_audit_retention(database_url: str, engine: Engine) -> None:
    new_token(database_url, "kept", "viewer")
    env = {"HEALTHDOCK_DATABASE_URL": database_url, "HEALTHDOCK_AUDIT_RETENTION_DAYS": "30"}
    result = CliRunner().invoke(main, ["prune"], env=env)
    assert result.exit_code == 0, result.output
    assert "removed 0 audit rows older than 30 days" in result.output
    assert len(audit_rows(database_url)) == 1


def test_a_replay_from_the_command_line_is_on_the_trail_before_it_runs(
    database_url: str, engine: Engine
) -> None:
    dry = cli(database_url, "replay", "--status", "failed", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert audit_rows(database_url, "--action", "replay") == []  # a dry run changes nothing
    done = cli(database_url, "replay", "--status", "failed", "--type", "patient.created")
    assert done.exit_code == 0, done.output
    [row] = audit_rows(database_url, "--action", "replay")
    assert row["actor"].startswith("cli")
    assert row["target"] == "type patient.created, status failed"


def test_a_sync_from_the_command_line_is_on_the_trail(database_url: str, engine: Engine) -> None:
    env = {
        "HEALTHDOCK_DATABASE_URL": database_url,
        "HEALTHDOCK_API_KEY": "key-for-nothing",
        "HEALTHDOCK_API_URL": "http://127.0.0.1:9/v1",  # nothing listens: the pass gives up
        "HEALTHDOCK_API_ATTEMPTS": "1",
    }
    result = CliRunner().invoke(main, ["sync", "patients", "--allow-mass-delete"], env=env)
    assert result.exit_code == 1  # incomplete, as expected
    [row] = audit_rows(database_url, "--action", "sync.release")
    assert row["target"] == "patient (brake released)"
    assert row["actor"].startswith("cli")


def test_a_session_ends_at_its_maximum_age_however_busy(database_url: str, engine: Engine) -> None:
    principal = tokens.Principal("admin", "admin", tokens.token_hash(BOOTSTRAP))
    idle = timedelta(minutes=30)
    session_id, _ = write_transaction(
        engine, lambda c: sessions.start_session(c, principal, "127.0.0.1", idle)
    )
    find = functools.partial(sessions.find_session, session_id=session_id, idle=idle,
                             bootstrap=BOOTSTRAP)  # fmt: skip
    assert write_transaction(engine, find) is not None
    with engine.begin() as connection:  # signed in 13 hours ago, used a moment ago
        connection.execute(
            console_sessions.update().values(
                created_at=datetime.now(UTC) - sessions.MAX_AGE - timedelta(hours=1)
            )
        )
    assert write_transaction(engine, find) is None


def test_the_trail_records_the_client_a_trusted_proxy_names(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    """Through the hospital's proxy (here: a peer on 127.0.0.1, trusted by default) the trail
    has the client's address; a peer that is not trusted cannot make one up."""
    for trusted, expected in (("127.0.0.1", "203.0.113.7"), ("192.0.2.1", "127.0.0.1")):
        log = tmp_path / f"receiver-{trusted}.log"
        with serve(database_url, log, admin_token=BOOTSTRAP, forwarded_allow_ips=trusted) as rx:
            login = httpx.get(f"{rx.base_url}/console/login")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
            assert csrf is not None
            # As a browser would send it (httpx keeps a Secure cookie off plain HTTP).
            cookie = f"hdm_login={login.cookies['hdm_login']}"
            httpx.post(f"{rx.base_url}/console/login",
                       data={"token": "wrong", "csrf_token": csrf.group(1)},
                       headers={"X-Forwarded-For": "203.0.113.7", "Cookie": cookie})  # fmt: skip
        [row] = [r for r in audit_rows(database_url, "--action", "console.login")
                 if r["target"] == "unknown or revoked token"][:1]  # fmt: skip
        assert row["client"] == expected
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM audit_log"))


def test_audit_since_and_until_bound_the_rows(database_url: str, engine: Engine) -> None:
    new_token(database_url, "bounded", "viewer")
    assert len(audit_rows(database_url, "--since", "2000-01-01T00:00:00Z")) == 1
    assert audit_rows(database_url, "--since", "2999-01-01") == []
    assert audit_rows(database_url, "--until", "2000-01-01") == []
    bad = cli(database_url, "audit", "--since", "yesterday")
    assert bad.exit_code == 2
    assert "ISO 8601" in bad.output
