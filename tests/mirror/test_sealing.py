"""Sealed values open with their key and context only, and say so clearly otherwise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirror import Sealer, SealError

KEY = "correct horse battery staple 0123456789"


@given(st.binary(max_size=4096), st.binary(max_size=64))
def test_a_sealed_value_opens_to_itself(plaintext: bytes, context: bytes) -> None:
    sealer = Sealer(KEY)
    sealed = sealer.seal(plaintext, context)
    assert len(plaintext) < 8 or plaintext not in sealed
    assert sealer.open(sealed, context) == plaintext


def test_each_sealing_differs() -> None:
    sealer = Sealer(KEY)
    assert sealer.seal(b"token", b"row") != sealer.seal(b"token", b"row")


def test_another_key_cannot_open_it_and_the_error_says_which_setting() -> None:
    sealed = Sealer(KEY).seal(b"hdat_secret", b"row")
    with pytest.raises(SealError, match="HEALTHDOCK_SECRET_KEY does not open") as refused:
        Sealer(KEY + "!").open(sealed, b"row")
    assert "hdat_secret" not in str(refused.value)


def test_a_value_moved_to_another_row_does_not_open() -> None:
    sealer = Sealer(KEY)
    with pytest.raises(SealError):
        sealer.open(sealer.seal(b"token", b"oauth_grants/healthdock/a"), b"oauth_grants/b")


@pytest.mark.parametrize("damage", ["flip", "truncate", "format"])
def test_a_damaged_value_does_not_open(damage: str) -> None:
    sealer = Sealer(KEY)
    sealed = bytearray(sealer.seal(b"token", b"row"))
    if damage == "flip":
        sealed[-1] ^= 1
    elif damage == "truncate":
        del sealed[10:]
    else:
        sealed[0] = 2
    with pytest.raises(SealError):
        sealer.open(bytes(sealed), b"row")
