"""Validation of exported artifacts against PyTorch: every artifact runs on its runtime
(:mod:`edgeprune.runtimes`: the host's LiteRT and ONNX Runtime, their aarch64 builds under
emulation, a numpy interpreter of CoreML ML programs) and is compared here. The public verb is
:func:`edgeprune.validate`."""

from edgeprune.validation.report import Check, Tolerance, ValidationReport, validate

__all__ = ["Check", "Tolerance", "ValidationReport", "validate"]
