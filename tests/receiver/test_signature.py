"""Signature rules, one test per way a signature can be right or wrong (no database)."""

from __future__ import annotations

import json

import pytest

from mirror.events import PayloadError
from receiver.signature import SignatureError, sign, stringify, verify

GITHUB_SECRET = b"It's a Secret to Everybody"

# Made with Node.js: JSON.stringify(document) and crypto.createHmac("sha256", GITHUB_SECRET).
COMPAT_SIGNED = (
    '{"event":"patient.updated","timestamp":"2024-01-12T10:30:00.250+05:30","data":'
    '{"patient_id":"PAT123456","first_name":"Zoë","last_name":"D\u2019Souza","weight":72,'
    '"score":1e-7,"big":1e+21,"notes":"line1\\nline2\\t\\"q\\"","tags":[],"ok":true,"none":null}}'
)
COMPAT_SIGNATURE = "sha256=56ece005650bed69a7345046ba0d2a81cc67565e31b713f375afa2d868cb1444"
# The same event as a non-JavaScript sender might write it: pretty-printed, floats as 72.0
# and 1e21, the signature member last. JSON.stringify of what it means is COMPAT_SIGNED.
COMPAT_BODY = f"""{{
  "event": "patient.updated",
  "timestamp": "2024-01-12T10:30:00.250+05:30",
  "data": {{"patient_id": "PAT123456", "first_name": "Zo\\u00eb", "last_name": "D\u2019Souza",
           "weight": 72.0, "score": 1e-07, "big": 1e21, "notes": "line1\\nline2\\t\\"q\\"",
           "tags": [], "ok": true, "none": null}},
  "signature": "{COMPAT_SIGNATURE}"
}}"""


def test_github_public_vector() -> None:
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert sign(b"Hello, World!", GITHUB_SECRET) == expected
    assert verify(b"Hello, World!", expected, [GITHUB_SECRET]) == b"Hello, World!"


def test_header_form_signs_the_raw_bytes() -> None:
    body = b'{"event": "patient.created",  "data": {}}'
    assert verify(body, sign(body, b"k"), [b"k"]) == body
    # The same JSON with other whitespace is other bytes: not what was signed.
    with pytest.raises(SignatureError):
        verify(b'{"event":"patient.created","data":{}}', sign(body, b"k"), [b"k"])


def test_tampered_body_is_rejected() -> None:
    body = b'{"event":"patient.created","data":{"patient_id":"PAT1"}}'
    with pytest.raises(SignatureError, match="does not match"):
        verify(body.replace(b"PAT1", b"PAT2"), sign(body, b"k"), [b"k"])


def test_wrong_secret_is_rejected() -> None:
    with pytest.raises(SignatureError):
        verify(b"{}", sign(b"{}", b"other"), [b"k"])


def test_any_configured_secret_verifies_during_rotation() -> None:
    old, new = b"old-secret", b"new-secret"
    assert verify(b"{}", sign(b"{}", old), [new, old]) == b"{}"
    assert verify(b"{}", sign(b"{}", new), [new, old]) == b"{}"
    with pytest.raises(SignatureError):
        verify(b"{}", sign(b"{}", b"retired"), [new, old])


@pytest.mark.parametrize(
    "header",
    [
        "",
        "sha256=",
        "sha1=" + "0" * 40,
        "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        "sha256=" + "z" * 64,
        "sha256=" + "0" * 63,
        "sha256=" + "0" * 65,
        "sha256=\u00e9" + "0" * 63,
    ],
)
def test_malformed_header_raises_signature_error(header: str) -> None:
    with pytest.raises(SignatureError):
        verify(b"{}", header, [b"k"])


def test_uppercase_hex_is_the_same_signature() -> None:
    signature = sign(b"{}", b"k")
    assert verify(b"{}", "sha256=" + signature[7:].upper(), [b"k"]) == b"{}"


def test_missing_header_and_no_embedded_signature() -> None:
    with pytest.raises(SignatureError, match="missing"):
        verify(b'{"event":"patient.created"}', None, [b"k"])
    with pytest.raises(SignatureError, match="missing"):
        verify(b"not json at all", None, [b"k"])
    with pytest.raises(SignatureError, match="missing"):
        verify(b'["signature"]', None, [b"k"])
    with pytest.raises(SignatureError, match="missing"):
        verify(b'{"signature": 7}', None, [b"k"])


def test_no_configured_secret_rejects_everything() -> None:
    with pytest.raises(SignatureError, match="no webhook secret"):
        verify(b"{}", sign(b"{}", b""), [])


def test_compatibility_form_matches_json_stringify() -> None:
    signed = verify(COMPAT_BODY.encode(), None, [GITHUB_SECRET])
    assert signed == COMPAT_SIGNED.encode()


def test_compatibility_form_rejects_a_changed_member() -> None:
    tampered = COMPAT_BODY.replace("PAT123456", "PAT123457")
    with pytest.raises(SignatureError, match="does not match"):
        verify(tampered.encode(), None, [GITHUB_SECRET])


def test_compatibility_form_is_order_sensitive_like_json_stringify() -> None:
    document = json.loads(COMPAT_BODY)
    reordered = {"timestamp": document["timestamp"], **document}
    with pytest.raises(SignatureError):
        verify(json.dumps(reordered).encode(), None, [GITHUB_SECRET])


def test_header_wins_over_embedded_signature() -> None:
    # With the header present, the raw body is what must be signed, whatever it embeds.
    with pytest.raises(SignatureError):
        verify(COMPAT_BODY.encode(), sign(b"other", GITHUB_SECRET), [GITHUB_SECRET])


def test_deeply_nested_compat_body_is_a_signature_error() -> None:
    body = ('{"signature":"sha256=' + "0" * 64 + '","d":' + "[" * 5000 + "]" * 5000 + "}").encode()
    with pytest.raises(SignatureError):
        verify(body, None, [b"k"])


@pytest.mark.parametrize(
    ("value", "javascript"),
    [
        # Each right-hand side is what Node.js's String(value) prints.
        (1.0, "1"),
        (0.5, "0.5"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-7, "1e-7"),
        (1e-6, "0.000001"),
        (1.2345678e-06, "0.0000012345678"),
        (-2.5, "-2.5"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (123456789012345680000.0, "123456789012345680000"),
        (-0.0, "0"),
        (12, "12"),
        (2**60, "1152921504606846976"),
    ],
)
def test_numbers_are_written_as_javascript_writes_them(value: float, javascript: str) -> None:
    assert stringify(value) == javascript


def test_strings_are_escaped_as_json_stringify_escapes_them() -> None:
    assert stringify({"a": 'é\n\t"\\\u2028\x01/'}) == '{"a":"é\\n\\t\\"\\\\\u2028\\u0001/"}'


def _embedded_signature_body(signed: bytes, secret: bytes, position: str) -> bytes:
    """The compatibility form as HealthDock writes it: its JSON.stringify output with the
    signature member spliced in (first, last, or as the only member)."""
    member = b'"signature":"' + sign(signed, secret).encode() + b'"'
    if signed == b"{}":
        return b"{" + member + b"}"
    if position == "first":
        return b"{" + member + b"," + signed[1:]
    return signed[:-1] + b"," + member + b"}"


@pytest.mark.parametrize("position", ["first", "last"])
def test_compatibility_form_recovers_the_signed_bytes_without_reparsing(position: str) -> None:
    body = _embedded_signature_body(COMPAT_SIGNED.encode(), GITHUB_SECRET, position)
    assert verify(body, None, [GITHUB_SECRET]) == COMPAT_SIGNED.encode()
    assert verify(_embedded_signature_body(b"{}", b"k", "first"), None, [b"k"]) == b"{}"


def test_a_large_body_not_in_json_stringify_form_is_refused_before_parsing() -> None:
    """The probe's stall: 1 MB of nested arrays under a made-up embedded signature was
    decoded and re-serialized in Python (a second of CPU) before the HMAC said no."""
    body = (
        b'{"signature":"sha256=' + b"0" * 64 + b'","data":['
        + b",".join([b"[[[[[1]]]]]"] * 90_000)
        + b"]}"
    )  # fmt: skip
    with pytest.raises(SignatureError, match="re-serialized only up to"):
        verify(body, None, [b"k"])
    # Pretty-printed, the same is refused on its size alone: it was never JSON.stringify's.
    with pytest.raises(SignatureError, match="re-serialized only up to"):
        verify(body.replace(b",", b", "), None, [b"k"])


def test_a_duplicate_member_before_the_signed_one_is_refused() -> None:
    """The probe's (a): JSON readers disagree on which of two "data" members counts."""
    signed_bytes = b'{"event":"patient.updated","timestamp":"2024-01-12T10:30:00Z","data":{"a":1}}'
    body = _embedded_signature_body(signed_bytes, b"k", "last")
    forged = body.replace(b'"data":', b'"data":{"a":2},"data":', 1)
    with pytest.raises(SignatureError, match="does not match"):
        verify(forged, None, [b"k"])
    # Written otherwise than by JSON.stringify, it would have to be re-read: refused unread.
    spaced = forged.replace(b'"signature":', b'"signature": ')
    with pytest.raises(PayloadError, match="duplicate member names"):
        verify(spaced, None, [b"k"])


def test_a_respelled_number_verifies_only_through_what_it_denotes() -> None:
    """The probe's (b): 3.0e1 is the number 30, and JSON.stringify writes it so."""
    signed_bytes = b'{"event":"appointment.updated","data":{"duration":30}}'
    body = _embedded_signature_body(signed_bytes, b"k", "last").replace(b"30", b"3.0e1")
    assert verify(body, None, [b"k"]) == signed_bytes


def test_a_lone_surrogate_is_not_reported_as_a_missing_header() -> None:
    # JSON.stringify("\ud800") writes the escape: what HealthDock's serializer can produce.
    signed_bytes = b'{"event":"patient.updated","data":{"first_name":"\\ud800"}}'
    body = _embedded_signature_body(signed_bytes, b"k", "last")
    assert verify(body, None, [b"k"]) == signed_bytes
    with pytest.raises(SignatureError, match="does not match"):
        verify(body, None, [b"other"])


def test_a_body_form_that_is_not_json_is_a_precise_payload_error() -> None:
    # Pretty-printed (so not JSON.stringify's) and cut short: nothing to re-serialize.
    with pytest.raises(PayloadError, match="cannot be checked: body is not valid JSON"):
        verify(b'{"signature": "sha256=' + b"0" * 64 + b'", "data": [1,', None, [b"k"])
    # A lone surrogate in a body not written by JSON.stringify: named as such.
    with pytest.raises(PayloadError, match="lone UTF-16 surrogate"):
        verify(b'{"signature": "sha256=' + b"0" * 64 + b'", "a": "\\ud800"}', None, [b"k"])


def test_a_member_moved_into_a_nested_object_is_not_the_body_signature() -> None:
    """Cut out of a nested object, the bytes would verify, but the stored body would carry a
    "signature" field in its data that HealthDock never signed."""
    signed_bytes = b'{"event":"patient.updated","data":{"a":1}}'
    body = _embedded_signature_body(signed_bytes, b"k", "last")
    member = body[len(signed_bytes) : -1]  # ,"signature":"sha256=..."
    moved = signed_bytes[:-2] + member + b"}}"  # {"event":...,"data":{"a":1,"signature":...}}
    assert verify(body, None, [b"k"]) == signed_bytes
    with pytest.raises(SignatureError):
        verify(moved, None, [b"k"])
