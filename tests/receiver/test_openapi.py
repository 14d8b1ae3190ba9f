"""The OpenAPI document at /schema: served whole with nothing fetched from elsewhere (a hospital
network may have no internet), and saying which operations want the admin token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import Engine

from receiver import create_app
from tests.conftest import make_settings

TOKEN = "openapi-token-0123456789"
# Where Litestar serves its HTML pages by default (each loads its scripts from a CDN).
UI_PATHS = ["swagger", "redoc", "elements", "rapidoc", "scalar", "stoplight", "oauth2-redirect"]
_EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


@pytest.fixture
def client(database_url: str, engine: Engine) -> Iterator[TestClient[Litestar]]:
    with TestClient(create_app(make_settings(database_url, admin_token=TOKEN))) as test_client:
        yield test_client


def document(client: TestClient[Litestar]) -> dict[str, Any]:
    response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    served: dict[str, Any] = response.json()
    return served


def test_schema_answers_the_document_and_no_page_loads_anything_from_outside(
    client: TestClient[Litestar],
) -> None:
    root = client.get("/schema")
    assert root.status_code == 200
    assert root.json() == document(client)
    for path in ["/schema", *(f"/schema/{page}" for page in UI_PATHS)]:
        response = client.get(path)
        assert response.status_code in (200, 404), path
        assert "<script" not in response.text, path
        assert not _EXTERNAL.search(response.text), path


def test_the_document_is_also_served_as_yaml(client: TestClient[Litestar]) -> None:
    response = client.get("/schema/openapi.yaml")
    assert response.status_code == 200
    assert yaml.safe_load(response.text)["paths"].keys() == document(client)["paths"].keys()


def test_the_operations_that_want_the_admin_token_declare_the_bearer_scheme(
    client: TestClient[Litestar],
) -> None:
    """Declared exactly where the receiver answers a request without it with a Bearer
    challenge: a guarded handler that forgets the declaration fails here, as does the reverse."""
    served = document(client)
    schemes = served["components"]["securitySchemes"]
    bearer = [
        name
        for name, scheme in schemes.items()
        if scheme["type"] == "http" and scheme["scheme"].lower() == "bearer"
    ]
    assert len(bearer) == 1, schemes
    challenged: dict[str, bool] = {}
    for path, operations in served["paths"].items():
        for method, operation in operations.items():
            url = re.sub(r"\{[^}]+\}", "1", path)
            answer = client.request(method.upper(), url, content=b"")
            key = f"{method.upper()} {path}"
            challenged[key] = answer.headers.get("WWW-Authenticate", "").startswith("Bearer")
            declared = {bearer[0]: []} in operation.get("security", [])
            assert declared == challenged[key], key
    assert challenged["GET /events"]
    assert not challenged["GET /metrics"]
