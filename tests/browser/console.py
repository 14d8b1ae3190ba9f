"""A real receiver for the browser tests, and what they do on its console."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner
from playwright.sync_api import Page

from healthdock_mirror.cli import main
from tests.factories import encode, signed
from tests.support.services import Service, serve

BOOTSTRAP = "browser-bootstrap-token-0123456789"


@dataclass
class Console:
    """``healthdock-mirror serve`` on loopback, its database, and the command line on it."""

    service: Service
    database_url: str

    @property
    def url(self) -> str:
        return f"{self.service.base_url}/console"

    def cli(self, *args: str) -> Any:
        env = {"HEALTHDOCK_DATABASE_URL": self.database_url}
        result = CliRunner().invoke(main, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result

    def token(self, name: str, role: str) -> str:
        return str(
            self.cli("token", "create", name, "--role", role).stdout.strip().splitlines()[-1]
        )

    def audit(self, *args: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.cli("audit", "--json", *args).stdout)
        return rows

    def status(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.cli("status", "--json").stdout)
        return document

    def post(self, document: dict[str, Any]) -> None:
        body = encode(document)
        response = httpx.post(f"{self.service.base_url}/webhooks/healthdock", content=body,
                              headers=signed(body), timeout=10)  # fmt: skip
        assert response.status_code == 200, response.text

    def sign_in(self, page: Page, token: str = BOOTSTRAP) -> None:
        page.goto(self.url)
        page.get_by_label("Token").fill(token)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{self.url}")


@contextlib.contextmanager
def running_console(database_url: str, tmp_path: Path) -> Iterator[Console]:
    with serve(database_url, tmp_path / "receiver.log", admin_token=BOOTSTRAP) as service:
        yield Console(service, database_url)
