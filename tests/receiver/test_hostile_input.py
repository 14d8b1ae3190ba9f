"""Hostile input: every endpoint under schemathesis, the webhook and the feed under hypothesis.

What must hold, whatever arrives: no 5xx answer; nothing stored for a request that is not
signed by our secret; memory bounded by the body limit, never by what a client sends.

One receiver per database takes every attack of the module, as a long-running one would,
through its real lifespan (intake, committer, database); each check is of what its own
requests did. Where httpx would refuse to send something (CR/LF in a header, bytes that are
not latin-1, a body streamed past the limit, a client that goes away), the ASGI application
is called with a raw scope, on the test client's own event loop. Every request is counted:
the module prints how many were tried and how many were answered 5xx (``_report_tally``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_outcome
from hypothesis import strategies as st
from litestar import Litestar
from litestar.serialization import encode_json
from litestar.testing import TestClient
from sqlalchemy import Engine, func, select

from mirror.database import create_mirror_engine, write_transaction
from mirror.eventlog import IncomingEvent, Outcome, store_events
from mirror.events import EVENT_TYPES, parse_event
from mirror.migrate import upgrade
from mirror.schema import webhook_events
from mirror.states import EventSource, EventStatus
from receiver import create_app
from receiver.signature import SIGNATURE_HEADER, sign, stringify
from tests.conftest import BACKENDS, make_settings, postgres_schema
from tests.factories import SECRET, TIMESTAMPS, appointment, encode, event, patient, signed

URL = "/webhooks/healthdock"
TOKEN = "hostile-admin-token-0123456789"
AUTH = f"Bearer {TOKEN}"
LIMIT = 64 * 1024  # max_body_bytes of the receiver under attack
_SIGNATURE = SIGNATURE_HEADER.lower().encode()

# Seeded and bounded: the same inputs on every run, and the module stays fast on both databases.
FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- the tally the README quotes ------------------------------------------------------------------


@dataclass
class Tally:
    tried: Counter[str]
    server_errors: Counter[str]

    def line(self) -> str:
        backends = ", ".join(
            f"{name}: {self.tried[name]} tried, {self.server_errors[name]} 5xx"
            for name in sorted(self.tried)
        )
        total, errors = sum(self.tried.values()), sum(self.server_errors.values())
        return f"hostile inputs: {total} tried, {errors} answered 5xx ({backends})"


TALLY = Tally(Counter(), Counter())


@pytest.fixture(scope="module", autouse=True)
def _report_tally(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if TALLY.tried:
        # Past output capture, so that the line shows without -s.
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\n{TALLY.line()}")


# --- the receiver under attack --------------------------------------------------------------------


@dataclass(frozen=True)
class RawAnswer:
    status: int
    body: bytes
    bytes_read: int  # how much of the request body the application pulled


@dataclass
class Target:
    """The receiver on a migrated database; every request it sends is counted."""

    client: TestClient[Litestar]
    engine: Engine
    backend: str

    def count(self, status: int) -> int:
        TALLY.tried[self.backend] += 1
        if status >= 500:
            TALLY.server_errors[self.backend] += 1
        return status

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        response = self.client.request(method, url, **kwargs)
        self.count(response.status_code)
        return response

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> Any:
        return self.request("POST", URL, content=body, headers=headers or {})

    def raw(
        self,
        method: str,
        path: str,
        headers: list[tuple[bytes, bytes]],
        chunks: Iterable[bytes] = (),
        *,
        query: bytes = b"",
        disconnect: bool = False,
    ) -> RawAnswer:
        """Call the application with exactly these header bytes and body chunks."""
        answer = self.client.blocking_portal.call(
            _call_asgi, self.client.app, method, path, query, headers, chunks, disconnect
        )
        self.count(answer.status)
        return answer

    def stored(self) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(select(func.count()).select_from(webhook_events)).scalar_one()
            )

    def kept_as_failed(self, response: Any, before: int) -> str:
        """A signed body the mirror cannot read: answered 200 ``failed`` and stored once (or a
        duplicate of one stored before); returns the stored reason."""
        assert response.status_code == 200, response.text
        receipt = response.json()["data"]
        assert receipt["status"] in ("failed", "duplicate"), receipt
        assert self.stored() == before + (receipt["status"] == "failed")
        if receipt["status"] == "duplicate":
            return "duplicate"  # stored before, with its reason
        with self.engine.connect() as connection:
            error = connection.execute(
                select(webhook_events.c.error).where(webhook_events.c.seq == receipt["seq"])
            ).scalar_one()
        assert error, receipt
        return str(error)

    def feed(self, seqs: Iterable[int], seconds: float = 60.0) -> dict[int, Any]:
        """The feed's events of these ``seqs``, every page of it read with status 200.

        On PostgreSQL an open write transaction anywhere on the server (other tests run on it)
        holds the feed back for a moment: waited for, with a deadline."""
        wanted, found = set(seqs), {}
        deadline = time.monotonic() + seconds
        cursor = "0"
        while True:
            params = {"after": cursor, "limit": 1000}
            response = self.request(
                "GET", "/events", params=params, headers={"Authorization": AUTH}
            )
            assert response.status_code == 200, response.text
            page = response.json()["data"]
            found.update({e["seq"]: e for e in page["events"] if e["seq"] in wanted})
            cursor = page["next_cursor"]
            if page["has_more"]:
                continue
            if len(found) == len(wanted):
                return found
            assert time.monotonic() < deadline, f"the feed gave {len(found)} of {len(wanted)}"
            time.sleep(0.05)


async def _call_asgi(
    app: Litestar,
    method: str,
    path: str,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    chunks: Iterable[bytes],
    disconnect: bool,
) -> RawAnswer:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "extensions": {},
    }
    pending = iter(chunks)
    upcoming = next(pending, None)
    read = 0
    status = 0
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal upcoming, read
        if upcoming is None:
            if disconnect:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": b"", "more_body": False}
        chunk, upcoming = upcoming, next(pending, None)
        read += len(chunk)
        more = upcoming is not None or disconnect
        return {"type": "http.request", "body": chunk, "more_body": more}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(scope, receive, send)  # type: ignore[arg-type]
    return RawAnswer(status, b"".join(body), read)


@pytest.fixture(
    scope="module",
    params=BACKENDS,
)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """The receiver under attack, on a new database of each kind, for the whole module."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'mirror.db'}"
        else:
            url = stack.enter_context(postgres_schema())
        engine = create_mirror_engine(url, timeout_seconds=2.0)
        stack.callback(engine.dispose)
        upgrade(engine)
        settings_ = make_settings(url, admin_token=TOKEN, max_body_bytes=LIMIT)
        client = stack.enter_context(TestClient(create_app(settings_)))
        yield Target(client, engine, request.param)


def _envelope_error(response: Any) -> str:
    body = response if isinstance(response, dict) else response.json()
    assert body["success"] is False
    code: str = body["error"]["code"]
    return code


# --- schemathesis: every operation of the receiver's own OpenAPI document -------------------------


def _openapi_document() -> dict[str, Any]:
    """The document the receiver serves at /schema/openapi.json (checked by the test below);
    built without starting the app, because schemathesis parametrizes at collection time."""
    app = create_app(make_settings("sqlite:///never-opened.db", admin_token=TOKEN))
    document: dict[str, Any] = json.loads(encode_json(app.openapi_schema.to_schema()))
    return document


OPENAPI = _openapi_document()
schema = schemathesis.openapi.from_dict(
    OPENAPI,
    config=schemathesis.Config.from_dict(
        {
            "seed": 20241125,
            # The token is the test's to send (``admin``): schemathesis cannot know it, and
            # would count a request it sent without one, that the test then authorized, as
            # invalid data accepted.
            "generation": {"mode": "all", "deterministic": True, "with-security-parameters": False},
        }
    ),
)


def test_the_fuzzed_document_is_the_one_served(target: Target) -> None:
    served = target.request("GET", "/schema/openapi.json")
    assert served.status_code == 200
    # Litestar makes up new examples for each app; everything else must be the same.
    assert _without_examples(served.json()) == _without_examples(OPENAPI)


def _without_examples(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_examples(v) for k, v in value.items() if k != "examples"}
    if isinstance(value, list):
        return [_without_examples(v) for v in value]
    return value


# A signature can be right only if the test makes it: schemathesis cannot. So a well-formed
# request may be refused (401), and "positive data is accepted" cannot hold for the webhook.
_CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.negative_data_rejection,
]


@schema.parametrize()
@schema.given(signing=st.sampled_from(["none", "ours", "wrong secret"]), admin=st.booleans())
@settings(
    max_examples=150,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    case: schemathesis.Case[Any], signing: str, admin: bool, target: Target
) -> None:
    """Generated from /schema/openapi.json, valid and invalid alike, sent in process."""
    prepared = requests.Request(**case.as_transport_kwargs(base_url="http://testserver")).prepare()
    raw = prepared.body or b""
    body = raw.encode() if isinstance(raw, str) else bytes(raw)  # type: ignore[arg-type]
    headers = dict(prepared.headers)
    if signing != "none":
        headers[SIGNATURE_HEADER] = sign(body, SECRET if signing == "ours" else b"not-ours")
    if admin:
        headers["Authorization"] = AUTH
    before = target.stored()
    response = target.request(
        prepared.method or "GET", prepared.url or "/", content=body, headers=headers
    )
    checks = _CHECKS
    if case.operation.path == "/webhooks/healthdock" and signing == "ours":
        # A correctly signed body is HealthDock's, whatever it holds: stored as failed and
        # answered 200 (SPEC.md, "Nothing authentic is lost"), not refused as invalid.
        checks = [c for c in checks if c is not schemathesis.checks.negative_data_rejection]
    if case.operation.path.startswith("/fhir/"):
        # A query carries only strings, and a FHIR parameter takes any (the FHIR parser is
        # the judge, fuzzed in tests/fhir_r4/test_hostile_search.py): "false" for `family` is
        # a name to search, not the boolean this check takes it for.
        checks = [c for c in checks if c is not schemathesis.checks.negative_data_rejection]
    case.validate_response(response, checks=checks)
    if signing != "ours" or response.status_code != 200:
        assert target.stored() == before


# --- the webhook: unsigned and wrongly signed bodies ----------------------------------------------


_WRONG_SIGNATURES = st.one_of(
    st.none(),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),  # httpx: ASCII
    st.binary(min_size=32, max_size=32).map(lambda digest: "sha256=" + digest.hex()),
    st.binary(max_size=64).map(lambda other: sign(other + b"~", SECRET)),
    st.just("wrong secret"),
)


@FUZZ
@given(body=st.binary(max_size=4096), signature=_WRONG_SIGNATURES)
def test_random_bytes_not_signed_by_us_are_401_and_nothing_is_stored(
    target: Target, body: bytes, signature: str | None
) -> None:
    before = target.stored()
    headers = {"Content-Type": "application/json"}
    if signature == "wrong secret":
        headers[SIGNATURE_HEADER] = sign(body, b"an-attackers-secret")
    elif signature is not None:
        headers[SIGNATURE_HEADER] = signature
    response = target.post(body, headers)
    assert response.status_code == 401
    assert _envelope_error(response) == "INVALID_SIGNATURE"
    assert target.stored() == before


_GARBAGE = st.one_of(
    st.binary(max_size=4096),
    # Valid JSON that is no event: any value, or an object without what an event needs.
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    ).map(lambda value: json.dumps(value).encode()),
)


@FUZZ
@given(body=_GARBAGE)
def test_a_valid_signature_over_garbage_is_kept_as_failed(target: Target, body: bytes) -> None:
    before = target.stored()
    target.kept_as_failed(target.post(body, signed(body)), before)


# --- the webhook: the body-embedded form, read one way only ------------------------------------


def _embedded(document: dict[str, Any], secret: bytes = SECRET) -> tuple[bytes, bytes]:
    """(the signed bytes, the body) of the compatibility form, as HealthDock writes it."""
    signed_bytes = stringify(document).encode()
    member = b'"signature":"' + sign(signed_bytes, secret).encode() + b'"'
    return signed_bytes, signed_bytes[:-1] + (b"," if document else b"") + member + b"}"


_SHAPES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=40,
)


@FUZZ
@given(data=st.dictionaries(st.text(max_size=8), _SHAPES, max_size=6), name=st.text(max_size=8))
def test_an_embedded_form_with_a_member_read_two_ways_stores_nothing_unsigned(
    target: Target, data: dict[str, Any], name: str
) -> None:
    document = {"event": "patient.updated", "timestamp": TIMESTAMPS[0], "data": data}
    _, body = _embedded(document)
    # An attacker's member spliced in before the signed one, under a name the body holds.
    forged_name = (list(data) or [name])[0]
    forged = body.replace(b'"data":{', b'"data":{' + stringify(forged_name).encode() + b':"x",', 1)
    before = target.stored()
    response = target.post(forged)
    if forged == body:
        return  # nothing was spliced (an empty name list): not the case under test
    assert response.status_code in (400, 401), response.text
    assert target.stored() == before


@FUZZ
@given(
    data=st.dictionaries(st.text(max_size=8), _SHAPES, max_size=6),
    junk=st.binary(min_size=1, max_size=64),
)
def test_a_body_form_with_a_wrong_signature_is_refused_whatever_surrounds_it(
    target: Target, data: dict[str, Any], junk: bytes
) -> None:
    document = {"event": "patient.updated", "timestamp": TIMESTAMPS[0], "data": data}
    _, body = _embedded(document, secret=b"not-ours")
    before = target.stored()
    for candidate in (body, junk + body, body + junk, body.replace(b"{", b"{ ", 1)):
        response = target.post(candidate)
        assert response.status_code in (400, 401), response.text
    assert target.stored() == before


# --- the webhook: events with every field wrong, signed and not -----------------------------------

_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # unbounded: far beyond 64 bits too
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),  # any code point but surrogates, NUL included
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_NAMES = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=60
)
_DATES = st.builds(
    "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}{}{}".format,
    st.integers(0, 10_000),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 25),
    st.integers(0, 61),
    st.integers(0, 61),
    st.sampled_from(["", ".5", ".123456789", ".1234567891", ",25"]),
    st.sampled_from(["Z", "z", "", "+05:30", "-23:59", "+24:00", "+99:99", "+0530", "Q"]),
)
_TIMESTAMPS = st.one_of(
    _DATES,
    _DATES.map(lambda text: text + " " * 60),
    _DATES.map(lambda text: "\u3000" * 50 + text),
    _DATES.map(lambda text: text + "\x00"),
    _JSON,
)
_IDS = st.one_of(_JSON_SCALARS, st.text(min_size=120, max_size=140), _NAMES)


_DROP = object()
_WRONG_FIELDS = st.one_of(st.just(_DROP), _JSON, _NAMES)


@st.composite
def hostile_events(draw: st.DrawFn) -> dict[str, Any]:
    """An event HealthDock could send, with some of its fields (any of them) wrong or gone."""

    def sometimes(value: Any, wrong: st.SearchStrategy[Any], odds: int = 8) -> Any:
        return draw(wrong) if draw(st.integers(1, odds)) == 1 else value

    kind = sometimes(draw(st.sampled_from([*EVENT_TYPES, "invoice.paid"])), _IDS)
    base = appointment if isinstance(kind, str) and kind.startswith("appointment") else patient
    record = base(draw(st.sampled_from(["R1", "R2", "R3"])))
    if base is patient:  # unicode names, on the path that is stored too
        record.update(first_name=draw(_NAMES), last_name=draw(_NAMES))
    data = {key: sometimes(value, _WRONG_FIELDS) for key, value in record.items()}
    data = {key: value for key, value in data.items() if value is not _DROP}
    if draw(st.integers(1, 4)) == 1:
        data.update(draw(st.dictionaries(_NAMES, _JSON, max_size=3)))
    document = {
        "id": sometimes(draw(st.uuids()).hex, _IDS | st.just(_DROP)),
        "event": kind,
        "timestamp": sometimes(draw(st.sampled_from(TIMESTAMPS)), _TIMESTAMPS | st.just(_DROP)),
        "data": sometimes(data, _JSON | st.just(_DROP), odds=16),
    }
    return {key: value for key, value in document.items() if value is not _DROP}


def _encode_any(document: dict[str, Any], ascii_only: bool) -> bytes:
    return json.dumps(document, ensure_ascii=ascii_only, separators=(",", ":")).encode()


@FUZZ
@given(document=hostile_events(), ascii_only=st.booleans(), embedded=st.booleans())
def test_events_with_wrong_fields_are_200_and_stored_only_when_signed(
    target: Target, document: dict[str, Any], ascii_only: bool, embedded: bool
) -> None:
    body = _encode_any(document, ascii_only)
    before = target.stored()
    forged = target.post(body, {SIGNATURE_HEADER: sign(body, b"an-attackers-secret")})
    tampered = target.post(body + b" ", signed(body))
    assert (forged.status_code, tampered.status_code) == (401, 401)
    assert target.stored() == before

    if embedded:  # the compatibility form: the signature is a member of the body
        signature = sign(stringify(document).encode(), SECRET)
        response = target.post(_encode_any({**document, "signature": signature}, ascii_only))
    else:
        response = target.post(body, signed(body))
    note_outcome(f"signed: {response.status_code}")  # see --hypothesis-show-statistics
    assert response.status_code == 200, response.text
    receipt = response.json()["data"]
    new = 0 if receipt["status"] == "duplicate" else 1
    assert target.stored() == before + new


@pytest.mark.parametrize(
    "timestamp",
    [
        "2024-02-30T10:30:00Z",
        "2023-02-29T10:30:00Z",
        "2024-13-01T10:30:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T23:60:00Z",
        "2024-01-01T10:30:00+24:00",
        "0000-01-01T00:00:00Z",
        "10000-01-01T00:00:00Z",
        "0001-01-01T00:00:00+00:01",
        "9999-12-31T23:59:59-00:01",
        "2024-01-01T10:30:00.1234567891Z",
        "2024-01-01",
        "",
        "\u0662\u0660\u0662\u0664-01-01T10:30:00Z",  # Arabic-Indic digits
    ],
)
def test_invalid_dates_are_kept_as_failed(target: Target, timestamp: str) -> None:
    before = target.stored()
    body = encode(event("patient.created", patient(), timestamp=timestamp))
    assert "timestamp" in target.kept_as_failed(target.post(body, signed(body)), before)


# --- the webhook: values the database or the committer cannot take --------------------------------


@pytest.mark.parametrize(
    "document",
    [
        event("patient.created", patient(), event_id="evt\x00"),
        event("x.y\x00", {}),
        event("patient.created", patient("PAT\x00")),
        event("appointment.created", {"appointment_id": "APT\x00"}),
    ],
    ids=["event id", "event type", "patient id", "appointment id"],
)
def test_nul_in_a_key_is_kept_as_failed_not_a_dead_committer(
    target: Target, document: dict[str, Any]
) -> None:
    before = target.stored()
    body = encode(document)
    assert "NUL" in target.kept_as_failed(target.post(body, signed(body)), before)
    fine = encode(event("patient.created", patient()))
    assert target.post(fine, signed(fine)).status_code == 200


@pytest.mark.parametrize(
    "padding", [" " * 60, "\n" * 60, "\u3000" * 60], ids=["spaces", "newlines", "ideographic"]
)
def test_a_timestamp_padded_past_its_column_is_kept_as_failed(target: Target, padding: str) -> None:
    before = target.stored()
    body = encode(event("patient.created", patient(), timestamp="2024-01-12T10:30:00Z" + padding))
    assert "timestamp" in target.kept_as_failed(target.post(body, signed(body)), before)


@pytest.mark.parametrize(
    "value",
    [2**64, -(2**63) - 1, 10**400],
    ids=["2**64", "-2**63-1", "10**400"],
)
def test_an_integer_beyond_64_bits_is_kept_as_failed(target: Target, value: int) -> None:
    for record in (patient(visits=[1, {"count": value}]), {**patient(), "patient_id": value}):
        before = target.stored()
        body = encode(event("patient.created", record))
        assert "64 bits" in target.kept_as_failed(target.post(body, signed(body)), before)
    edge = encode(event("patient.created", patient(visits=[2**64 - 1, -(2**63)])))
    assert target.post(edge, signed(edge)).status_code == 200


def _nested(depth: int) -> bytes:
    """A signed-able patient event whose record holds ``depth`` levels of nesting."""
    inner = '{"a":' * depth + "1" + "}" * depth
    return (
        '{"event":"patient.created","timestamp":"2024-01-12T10:30:00Z",'
        f'"data":{{"patient_id":"PD{depth}","notes":{inner}}}}}'
    ).encode()


def test_nesting_is_refused_past_64_levels_and_the_feed_serves_what_was_stored(
    target: Target,
) -> None:
    # Sweeps the depths where decoding still works but each later step (hashing, framing for
    # the committer, encoding the feed's answer) is a few frames closer to the recursion limit.
    limit = sys.getrecursionlimit()
    before = target.stored()
    seqs = []
    for depth in (1, 30, 61, 62, *range(limit - 150, limit + 5), 50_000):
        body = _nested(depth)[:LIMIT]
        response = target.post(body, signed(body))
        # + the document and the record: 64 levels. Deeper is HealthDock's too: kept as failed.
        assert response.status_code == 200, depth
        receipt = response.json()["data"]
        assert receipt["status"] == ("applied" if depth <= 62 else "failed"), depth
        if depth <= 62:
            seqs.append(receipt["seq"])
    assert target.stored() == before + len(
        {
            _nested(depth)[:LIMIT]
            for depth in (1, 30, 61, 62, *range(limit - 150, limit + 5), 50_000)
        }
    )
    assert all(event["payload"] is not None for event in target.feed(seqs).values())


def test_the_feed_serves_events_stored_nested_too_deep_to_encode(target: Target) -> None:
    # Stored before the receiver refused them, or by a reconcile pass: the feed must not stall.
    limit = sys.getrecursionlimit()
    depths = [70, *range(limit - 120, limit + 5, 5)]
    parsed = parse_event(event("patient.created", {"patient_id": "PD"}))
    incoming = [
        IncomingEvent(EventSource.WEBHOOK, f"id:deep{depth}", parsed, _nested(depth), [], _now())
        for depth in depths
    ]
    items = [(item, Outcome(EventStatus.APPLIED, "created")) for item in incoming]
    stored = write_transaction(target.engine, lambda connection: store_events(connection, items))
    after_them = encode(event("patient.created", patient()))
    answer = target.post(after_them, signed(after_them))
    assert answer.status_code == 200
    served = target.feed([*stored.values(), answer.json()["data"]["seq"]])
    assert all(served[seq]["payload"] is None for seq in stored.values())
    assert served[answer.json()["data"]["seq"]]["payload"]["data"]["patient_id"] == "PAT000001"


def _now() -> datetime:
    return datetime.now(UTC)


# --- the webhook: headers no HTTP client library would send ---------------------------------------


def _raw_post(target: Target, body: bytes, headers: list[tuple[bytes, bytes]]) -> RawAnswer:
    return target.raw("POST", URL, [(b"content-type", b"application/json"), *headers], [body])


def _good() -> tuple[bytes, bytes]:
    body = encode(event("patient.created", patient()))
    return body, sign(body, SECRET).encode()


def test_header_injection_and_odd_signature_headers_are_401(target: Target) -> None:
    before = target.stored()
    body, valid = _good()
    hostile = [
        [(_SIGNATURE, valid + b"\r\nX-Injected: 1")],
        [(_SIGNATURE, b"\r\n" + valid[:-1])],
        [(_SIGNATURE, valid[:-2] + "é".encode())],  # UTF-8 where latin-1 is read
        [(_SIGNATURE, valid.replace(b"sha256=", "sha256\uff1d".encode()))],  # fullwidth =
        [(_SIGNATURE, b"sha256=" + b"0" * 1_000_000)],  # oversized
        [(_SIGNATURE, valid + b"0" * 1_000_000)],
        [(_SIGNATURE, b"\x00" + valid)],
        [(_SIGNATURE, b"\xff" * 71)],
        [(_SIGNATURE.upper(), b"sha256=" + b"f" * 64)],
        [(_SIGNATURE, b"")],
        # Two signature headers are ambiguous (a proxy may check one, we the other): refused.
        [(_SIGNATURE, b"sha256=" + b"0" * 64), (_SIGNATURE, valid)],
        [(_SIGNATURE, valid), (_SIGNATURE, b"sha256=" + b"0" * 64)],
        [(_SIGNATURE, valid), (_SIGNATURE, valid)],
    ]
    for headers in hostile:
        answer = _raw_post(target, body, headers)
        assert answer.status == 401, headers[0][1][:80]
    assert target.stored() == before
    assert _raw_post(target, body, [(_SIGNATURE, valid)]).status == 200


def test_two_authorization_headers_are_401_whichever_is_right(target: Target) -> None:
    """Ambiguous, as two signature headers are: a proxy in front may check one, we the other."""
    right, wrong = AUTH.encode(), b"Bearer wrong-guess"
    for pair in ([right, wrong], [wrong, right], [right, right]):
        answer = target.raw("GET", "/events", [(b"authorization", value) for value in pair])
        assert answer.status == 401, pair
        error = json.loads(answer.body)["error"]
        assert error["code"] == "UNAUTHORIZED"
        assert "more than one Authorization header" in error["message"]
        assert TOKEN not in error["message"]
    assert target.raw("GET", "/events", [(b"authorization", right)]).status == 200


_HEADER_BYTES = st.binary(max_size=200)


# Any bytes in a header's name (past a prefix that keeps it clear of the headers the receiver
# reads) and value.
_HEADER_NAMES = st.binary(max_size=40).map(lambda name: b"x-" + name.lower())


@FUZZ
@given(name=_HEADER_NAMES, value=_HEADER_BYTES, signature=_HEADER_BYTES)
def test_arbitrary_header_bytes_never_5xx_and_only_a_valid_signature_stores(
    target: Target, name: bytes, value: bytes, signature: bytes
) -> None:
    body = encode(event("patient.created", patient()))
    before = target.stored()
    forged = _raw_post(target, body, [(name, value), (_SIGNATURE, signature)])
    assert forged.status == 401
    assert target.stored() == before
    # The same odd header next to a valid signature: stored, its bytes read as latin-1.
    valid = sign(body, SECRET).encode()
    answer = _raw_post(target, body, [(name, value), (_SIGNATURE, valid)])
    assert answer.status == 200, answer.body
    assert target.stored() == before + 1


# --- the webhook: bodies past the limit, and clients that go away ---------------------------------


def test_a_body_of_many_megabytes_is_refused_at_the_limit_without_being_buffered(
    target: Target,
) -> None:
    before = target.stored()
    chunk = b"x" * (16 * 1024)
    total = 32 * 1024 * 1024
    _raw_post(target, b"", [])  # warms up the error path, so the measure is of this request
    tracemalloc.start()
    try:
        streamed = target.raw("POST", URL, [], itertools.repeat(chunk, total // len(chunk)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert streamed.status == 413
    assert json.loads(streamed.body)["error"]["code"] == "PAYLOAD_TOO_LARGE"
    # The application stopped reading one chunk past the limit, and held no more than that.
    assert streamed.bytes_read <= LIMIT + len(chunk)
    assert peak < 4 * LIMIT
    announced = target.raw(
        "POST", URL, [(b"content-length", str(total).encode())], itertools.repeat(chunk, 4)
    )
    assert (announced.status, announced.bytes_read) == (413, 0)
    assert target.stored() == before


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (b"abc", {400}),
        (b"1e9", {400}),
        (b"", {400}),
        (b"99999999999999999999999999", {413}),
        # A server refuses it before the app sees it; if one did not, the body still counts.
        (b"-1", {200, 400}),
    ],
)
def test_a_garbled_content_length_is_4xx(target: Target, length: bytes, expected: set[int]) -> None:
    before = target.stored()
    body, valid = _good()
    answer = _raw_post(target, body, [(b"content-length", length), (_SIGNATURE, valid)])
    assert answer.status in expected
    assert target.stored() == before + (1 if answer.status == 200 else 0)


def test_a_client_that_goes_away_mid_body_is_not_a_server_error(target: Target) -> None:
    before = target.stored()
    body, valid = _good()
    answer = target.raw(
        "POST", URL, [(_SIGNATURE, valid)], [body[: len(body) // 2]], disconnect=True
    )
    assert 400 <= answer.status < 500
    assert target.stored() == before


def test_deeply_nested_signed_json_uses_bounded_memory(target: Target) -> None:
    shapes = {
        "arrays": b"[" * LIMIT,
        "objects": b'{"a":' * (LIMIT // 5),
        "record": _nested(LIMIT // 5)[:LIMIT],
        "closed": _nested(900),
    }
    for name, body in shapes.items():
        before = target.stored()
        tracemalloc.start()
        try:
            response = target.post(body, signed(body))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert target.kept_as_failed(response, before), name
        # Measured: under 3 times the body (the levels decoded before the limit, the answer).
        assert peak < 8 * LIMIT, (name, peak)


def _filling(make: Any) -> bytes:
    """The largest patient event under the limit whose record holds ``make(n)``."""

    def body(n: int) -> bytes:
        return encode(event("patient.created", patient(f"PH{n}", notes=make(n))))

    low, high = 0, LIMIT
    while low < high:  # the largest n whose body fits
        middle = (low + high + 1) // 2
        low, high = (middle, high) if len(body(middle)) <= LIMIT else (low, middle - 1)
    return body(low)


def test_huge_signed_events_just_under_the_limit_use_bounded_memory(target: Target) -> None:
    before = target.stored()
    shapes = {
        "zeros": _filling(lambda n: [0] * n),
        "empty objects": _filling(lambda n: [{}] * n),
        "empty arrays": _filling(lambda n: [[]] * n),
        "keys": _filling(lambda n: {str(i): None for i in range(n)}),
        "text": _filling(lambda n: "\u00e9" * n),
    }
    for name, body in shapes.items():
        tracemalloc.start()
        try:
            response = target.post(body, signed(body))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert response.status_code == 200, name
        # Decoded, every 3 bytes of `[{},{},...]` are a 64-byte dict: measured up to 32 times
        # the body. Bounded by the limit, whatever the shape.
        assert peak < 64 * LIMIT, (name, peak)
    assert target.stored() == before + len(shapes)


# --- GET /events: cursors, limits and types an attacker picks -------------------------------------

_CURSOR_LIKE = [
    *(b"0", b"00", b"0.0", b"1.1", b"0.1", b"1.0", b" 1.1", b"1.1 ", b"-1.1", b"NaN", b"-0"),
    *(b"9223372036854775807.9223372036854775807", b"9223372036854775808.1", b"1e3", b"0x10"),
    *(b"1000", b"1001", b"", b"patient.created,,,", b"," * 1000, b"\x00"),
    "\uff11.\uff11".encode(),  # fullwidth digits
]
_QUERY_VALUES = st.one_of(
    st.binary(max_size=30),
    st.from_regex(r"\A-?[0-9]{1,25}(\.[0-9]{0,25}){0,2}\Z").map(str.encode),
    st.sampled_from(_CURSOR_LIKE),
)
_AUTH = st.sampled_from(
    [
        None, AUTH.encode(), b"Bearer wrong", b"Bearer", b"Bearer ", b"bearer " + TOKEN.encode(),
        b"Basic " + TOKEN.encode(), TOKEN.encode(), b"Bearer " + b"x" * 100_000,
        b"Bearer " + TOKEN.encode() + b"\xff", "Bearer é".encode(), b"Bearer \x00",
        AUTH.encode() + b"\r\nX-Injected: 1",
    ]
)  # fmt: skip


@FUZZ
@given(
    params=st.lists(
        st.tuples(st.sampled_from([b"after", b"limit", b"type", b"x", b"after[]"]), _QUERY_VALUES),
        max_size=5,
    ),
    authorization=_AUTH,
)
def test_the_feed_answers_hostile_queries_with_4xx_or_a_page(
    target: Target, params: list[tuple[bytes, bytes]], authorization: bytes | None
) -> None:
    query = b"&".join(f"{quote_from_bytes(k)}={quote_from_bytes(v)}".encode() for k, v in params)
    headers = [] if authorization is None else [(b"authorization", authorization)]
    answer = target.raw("GET", "/events", headers, query=query)
    if authorization not in (AUTH.encode(), b"bearer " + TOKEN.encode()):
        assert answer.status == 401
        assert TOKEN.encode() not in answer.body
        return
    assert answer.status in (200, 400), answer.body
    document = json.loads(answer.body)
    if answer.status == 200:
        assert set(document["data"]) == {"events", "next_cursor", "has_more"}
    else:
        assert document["error"]["code"] == "INVALID_REQUEST"


def test_with_no_admin_token_configured_every_hostile_feed_request_is_401(
    database_url: str, engine: Engine
) -> None:
    settings_ = make_settings(database_url, admin_token=None)
    backend = database_url.split(":", 1)[0].split("+", 1)[0]
    with TestClient(create_app(settings_)) as client:
        closed = Target(client, engine, backend)
        for authorization in [None, AUTH.encode(), b"Bearer ", b"Bearer \xff\x00"]:
            for query in [b"", b"after=1.1", b"limit=-1", b"type=%FF"]:
                headers = [] if authorization is None else [(b"authorization", authorization)]
                answer = closed.raw("GET", "/events", headers, query=query)
                # No bootstrap token and no named one: nobody is anybody.
                assert answer.status == 401
                assert _envelope_error(json.loads(answer.body)) == "UNAUTHORIZED"
