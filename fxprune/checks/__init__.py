"""Checks: the exactness oracles, the in-place consistency check, and output comparison."""
from .certificate import Certificate, certify
from ..compare import plain_outputs, relative_error
from .oracles import VerifyReport, run_oracles

__all__ = ["run_oracles", "VerifyReport", "certify", "Certificate", "relative_error", "plain_outputs"]
