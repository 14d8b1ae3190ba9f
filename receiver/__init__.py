"""The webhook receiver: verify, store durably, apply, acknowledge."""

from receiver.app import create_app
from receiver.signature import SIGNATURE_HEADER, SignatureError, sign, verify

__all__ = ["SIGNATURE_HEADER", "SignatureError", "create_app", "sign", "verify"]
