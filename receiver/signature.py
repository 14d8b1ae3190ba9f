"""HealthDock webhook signatures: HMAC-SHA256 over the signed bytes, as ``sha256=<hex>``.

Two forms are accepted. The header form (the reference's ``verifyWebhook``) signs the raw body
and carries the signature in ``X-HealthDock-Signature``. The compatibility form carries it in
the body's top-level ``"signature"`` member and signs the body re-serialized without that member
as ``JSON.stringify`` would write it: compact, original key order, non-ASCII left as is.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Sequence

import msgspec

SIGNATURE_HEADER = "X-HealthDock-Signature"
_PREFIX = "sha256="
_HEX_DIGITS = frozenset("0123456789abcdef")
_MAX_DEPTH = 64


class SignatureError(Exception):
    """The body is not signed by any of our secrets (or the signature cannot be read)."""


def sign(content: bytes, secret: bytes) -> str:
    """The signature HealthDock puts on ``content``: ``sha256=<hex HMAC-SHA256>``."""
    return _PREFIX + hmac.digest(secret, content, "sha256").hex()


def verify(body: bytes, header: str | None, secrets: Sequence[bytes]) -> bytes:
    """Check ``body`` against the header or the body-embedded signature.

    Returns the bytes that were signed (the body, or its re-serialized form). Raises
    :class:`SignatureError` for any signature that is missing, unreadable or wrong.
    """
    if not secrets:
        raise SignatureError("no webhook secret is configured")
    if header is not None:
        _check(body, header, secrets)
        return body
    signed, signature = _embedded(body)
    _check(signed, signature, secrets)
    return signed


def _check(content: bytes, signature: str, secrets: Sequence[bytes]) -> None:
    digest = _parse(signature)
    matched = False
    # Compare against every secret, whatever matched, so timing says nothing about which.
    for secret in secrets:
        matched |= hmac.compare_digest(hmac.digest(secret, content, "sha256"), digest)
    if not matched:
        raise SignatureError("signature does not match")


def _parse(signature: str) -> bytes:
    text = signature.strip()
    if not text.startswith(_PREFIX):
        raise SignatureError("signature must look like sha256=<hex>")
    digest = text[len(_PREFIX) :].lower()
    if len(digest) != 64 or not _HEX_DIGITS.issuperset(digest):
        raise SignatureError("signature must look like sha256=<64 hex digits>")
    return bytes.fromhex(digest)


def _embedded(body: bytes) -> tuple[bytes, str]:
    """Find the compatibility form's signature and the bytes it covers."""
    try:
        document = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise SignatureError(f"missing {SIGNATURE_HEADER} header") from None
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
