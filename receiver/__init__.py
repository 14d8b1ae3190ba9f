"""The webhook receiver: verify, store durably, apply, acknowledge.

What is named here is its public surface (pinned by tests/receiver/test_exported_members.py):
what the command line uses.
"""

from receiver.app import create_app
from receiver.metrics import Metrics
from receiver.oauth_callback import CALLBACK_PATH, callback_app
from receiver.server import serve
from receiver.signature import SIGNATURE_HEADER, SignatureError, sign, verify

__all__ = ["CALLBACK_PATH", "SIGNATURE_HEADER", "Metrics", "SignatureError", "callback_app",
           "create_app", "serve", "sign", "verify"]  # fmt: skip
