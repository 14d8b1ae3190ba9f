"""The webhook receiver: verify, store durably, apply, acknowledge.

What is named here is its public surface (pinned by tests/receiver/test_exported_members.py):
what the command line uses.
"""

from receiver.app import create_app
from receiver.metrics import Metrics
from receiver.server import serve
from receiver.signature import SIGNATURE_HEADER, SignatureError, sign, verify

__all__ = ["SIGNATURE_HEADER", "Metrics", "SignatureError", "create_app", "serve", "sign", "verify"]
