"""Validation of exported artifacts against PyTorch on their runtimes (host, aarch64 builds
under emulation, and a numpy reference interpreter for CoreML ML programs).

``edgeprune.validate(bundle, data, on=("host",))`` is this package called as a function:
:func:`edgeprune.validate.report.validate`.
"""

from edgeprune._callable import make_callable
from edgeprune.validate.report import Check, ValidationReport, validate

__all__ = ["Check", "ValidationReport", "validate"]

make_callable(__name__, lambda: validate, validate.__doc__ or "")
