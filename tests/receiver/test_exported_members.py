"""The receiver's public surface: what the command line uses."""

from __future__ import annotations

import receiver


def test_exported_members() -> None:
    assert len(receiver.__all__) == len(set(receiver.__all__))
    assert sorted(receiver.__all__) == sorted(
        [
            "CALLBACK_PATH", "Metrics", "SIGNATURE_HEADER", "SignatureError", "callback_app",
            "create_app", "serve",
            "sign", "verify"
        ]
    )  # fmt: skip
    for name in receiver.__all__:
        assert getattr(receiver, name) is not None
