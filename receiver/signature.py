"""HealthDock webhook signatures: HMAC-SHA256 over the signed bytes, as ``sha256=<hex>``.

Two forms are accepted. The header form (the reference's ``verifyWebhook``) signs the raw body
and carries the signature in ``X-HealthDock-Signature``. The compatibility form carries it in
the body's top-level ``"signature"`` member and signs the body re-serialized without that member
as ``JSON.stringify`` would write it: compact, original key order, non-ASCII left as is.

Checking the compatibility form must not cost an unauthenticated sender's victim more than the
header form does. ``JSON.stringify`` is deterministic, so a body that HealthDock wrote is its
signed bytes with the member spliced in: cutting the member out again recovers them with a few
byte scans (linear, in C). Only a body that is not in that form (pretty-printed, say) is decoded
and re-serialized, and only when it is small enough for that to stay cheap; a larger one is
refused before any parsing starts.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Iterator, Sequence

import msgspec

from config import MirrorError
from mirror import PayloadError, decode_document

SIGNATURE_HEADER = "X-HealthDock-Signature"
_PREFIX = "sha256="
_HEX_DIGITS = frozenset("0123456789abcdef")
_MAX_DEPTH = 64
# The member as JSON.stringify writes it, signature first or after another member.
_MEMBER_OPENING = b'"signature":"sha256='
_HEX_BYTES = frozenset(b"0123456789abcdefABCDEF")
# A body usually holds one member that looks like it; a few are tried, never an unbounded number.
_MAX_CANDIDATES = 4
# Re-serializing costs about a microsecond a JSON value in Python: these bounds keep a refused
# body's cost near what the header form costs for the largest body (a millisecond or so).
MAX_RESERIALIZED_BYTES = 16 * 1024
MAX_RESERIALIZED_VALUES = 1024


class SignatureError(MirrorError):
    """The body is not signed by any of our secrets (or the signature cannot be read)."""


def sign(content: bytes, secret: bytes) -> str:
    """The signature HealthDock puts on ``content``: ``sha256=<hex HMAC-SHA256>``."""
    return _PREFIX + hmac.digest(secret, content, "sha256").hex()


def verify(body: bytes, header: str | None, secrets: Sequence[bytes]) -> bytes:
    """Check ``body`` against the header or the body-embedded signature.

    Returns the bytes that were signed (the body, or the body without its signature member).
    Raises :class:`SignatureError` for any signature that is missing, unreadable or wrong, and
    :class:`~mirror.events.PayloadError` for a body-embedded one in bytes that are not JSON.
    """
    if not secrets:
        raise SignatureError("no webhook secret is configured")
    if header is not None:
        _check(body, header, secrets)
        return body
    found_member = False
    for start, end, signature in _members(body):
        found_member = True
        # Only a member first or last in the outermost object: one spliced into a nested
        # object would verify too, and then be stored as a field nobody signed.
        outermost = body[:1] == b"{" and body[-1:] == b"}"
        if outermost and (start == 1 or end == len(body) - 1):
            signed = _without(body, start, end)
            if _matches(signed, signature, secrets):
                return signed
    signed, signature = _reserialized(body, found_member=found_member)
    _check(signed, signature, secrets)
    return signed


def _members(body: bytes) -> Iterator[tuple[int, int, str]]:
    """Where the body holds ``"signature":"sha256=<64 hex>"`` (at most a few), and its value.

    ``bytes.find`` rather than a regular expression: it skips through a large body at memory
    speed, and a refused body should cost no more than the header form's single HMAC.
    """
    start, found = 0, 0
    while found < _MAX_CANDIDATES:
        start = body.find(_MEMBER_OPENING, start)
        if start < 0:
            return
        value = start + len(_MEMBER_OPENING) - len(_PREFIX)
        end = value + len(_PREFIX) + 64
        digits = body[value + len(_PREFIX) : end]
        if body[end : end + 1] == b'"' and len(digits) == 64 and _is_hex(digits):
            found += 1
            yield start, end + 1, body[value:end].decode()
        start += 1


def _is_hex(digits: bytes) -> bool:
    return _HEX_BYTES.issuperset(digits)


def _without(body: bytes, start: int, end: int) -> bytes:
    """``body`` with the member at ``start:end`` cut out, with the comma that joined it."""
    if body[start - 1 : start] == b",":
        return body[: start - 1] + body[end:]
    if body[end : end + 1] == b",":
        return body[:start] + body[end + 1 :]
    return body[:start] + body[end:]


def _check(content: bytes, signature: str, secrets: Sequence[bytes]) -> None:
    if not _matches(content, signature, secrets):
        raise SignatureError("signature does not match")


def _matches(content: bytes, signature: str, secrets: Sequence[bytes]) -> bool:
    digest = _parse(signature)
    matched = False
    # Compare against every secret, whatever matched, so timing says nothing about which.
    for secret in secrets:
        matched |= hmac.compare_digest(hmac.digest(secret, content, "sha256"), digest)
    return matched


def _parse(signature: str) -> bytes:
    text = signature.strip()
    if not text.startswith(_PREFIX):
        raise SignatureError("signature must look like sha256=<hex>")
    digest = text[len(_PREFIX) :].lower()
    if len(digest) != 64 or not _HEX_DIGITS.issuperset(digest):
        raise SignatureError("signature must look like sha256=<64 hex digits>")
    return bytes.fromhex(digest)


def _reserialized(body: bytes, *, found_member: bool) -> tuple[bytes, str]:
    """The compatibility form of a body not written by JSON.stringify, and its signature."""
    if not found_member and b'"signature"' not in body:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    # Every JSON value but the first follows a comma, or opens an array or object.
    too_large = len(body) > MAX_RESERIALIZED_BYTES
    if (
        too_large
        or body.count(b",") + body.count(b"[") + body.count(b"{") > MAX_RESERIALIZED_VALUES
    ):
        raise SignatureError(
            "signature does not match (a body-embedded signature is checked over the body "
            "as sent without that member; a body written otherwise than by JSON.stringify is "
            f"re-serialized only up to {MAX_RESERIALIZED_BYTES} bytes and "
            f"{MAX_RESERIALIZED_VALUES} values: send the {SIGNATURE_HEADER} header instead)"
        )
    try:
        document = decode_document(body)
    except PayloadError as error:
        if found_member:
            # Checked as sent already; the body cannot be read otherwise.
            raise SignatureError("signature does not match") from None
        # Refused before anything is trusted: 400, saying what is wrong with the bytes.
        raise PayloadError(f"body-embedded signature cannot be checked: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("signature"), str):
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    signature = document.pop("signature")
    try:
        return stringify(document).encode(), signature
    except (ValueError, RecursionError):
        raise SignatureError("body cannot be re-serialized to check its signature") from None


def stringify(value: object, _depth: int = 0) -> str:
    """``JSON.stringify(value)``: compact, in insertion order, numbers as JavaScript writes them."""
    if _depth > _MAX_DEPTH:
        raise ValueError("nested too deeply")
    if isinstance(value, dict):
        members = (f"{_string(k)}:{stringify(v, _depth + 1)}" for k, v in value.items())
        return "{" + ",".join(members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(stringify(v, _depth + 1) for v in value) + "]"
    if isinstance(value, str):
        return _string(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _js_number(value)
    raise ValueError("not a JSON value")


def _string(text: str) -> str:
    # JSON.stringify escapes the same characters as ensure_ascii=False: quote, backslash,
    # and control characters (\b \f \n \r \t by name, the rest as \u00XX).
    return msgspec.json.encode(text).decode()


def _js_number(number: float) -> str:
    """Number::toString: shortest round-trip digits, exponent only below 1e-6 or from 1e21."""
    if math.isnan(number) or math.isinf(number):
        return "null"
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    mantissa, _, exponent_text = repr(abs(number)).partition("e")
    exponent = int(exponent_text) if exponent_text else 0
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    # Position of the decimal point relative to the first significant digit (JS's "n").
    point = (
        len(whole) + exponent
        if whole != "0"
        else exponent - (len(fraction) - len(fraction.lstrip("0")))
    )
    digits = digits.rstrip("0") or "0"
    count = len(digits)
    if count <= point <= 21:
        return sign + digits + "0" * (point - count)
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * (-point) + digits
    exponent = point - 1
    mantissa = digits[0] + ("." + digits[1:] if count > 1 else "")
    return f"{sign}{mantissa}e{'+' if exponent > 0 else '-'}{abs(exponent)}"
