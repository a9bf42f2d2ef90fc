"""Checks: the exactness oracles, the in-place consistency check, and output comparison."""
from .certificate import Certificate, certify
from .compare import plain_outputs, relative_error
from .oracles import VerifyReport, verify

__all__ = ["verify", "VerifyReport", "certify", "Certificate", "relative_error", "plain_outputs"]
