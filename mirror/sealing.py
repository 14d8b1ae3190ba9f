"""Secrets the mirror must keep but never store as they are: sealed with AES-256-GCM.

The key is derived with HKDF-SHA256 from ``HEALTHDOCK_SECRET_KEY`` (at least 32 characters,
meant to be random: ``python -c "import secrets; print(secrets.token_urlsafe(32))"``), so the
setting can be any string while the cipher gets a uniform 256-bit key. Each sealing draws a
fresh 96-bit nonce. A sealed value is bound to its ``context`` (what row it belongs to) as
associated data: moved to another row, it no longer opens.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from config import MirrorError

__all__ = ["SealError", "Sealer"]

_FORMAT = b"\x01"  # this layout: format, nonce, ciphertext and tag
_NONCE_BYTES = 12
_SALT = b"healthdock-mirror sealing"


class SealError(MirrorError):
    """A sealed value that this key cannot open: another key, or a damaged value."""


class Sealer:
    def __init__(self, secret_key: str, *, purpose: bytes = b"oauth tokens v1") -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=purpose).derive(
            secret_key.encode()
        )
        self._cipher = AESGCM(key)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _FORMAT + nonce + self._cipher.encrypt(nonce, plaintext, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        if sealed[:1] != _FORMAT or len(sealed) < 1 + _NONCE_BYTES + 16:
            raise SealError("not a sealed value of this version")
        nonce, body = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._cipher.decrypt(nonce, body, context)
        except InvalidTag:
            raise SealError(
                "HEALTHDOCK_SECRET_KEY does not open the stored tokens (it changed since they "
                "were stored?)"
            ) from None
