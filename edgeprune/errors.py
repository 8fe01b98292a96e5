"""Every exception edgeprune raises on purpose derives from :class:`EdgepruneError`.

A message says what failed, the value seen, what is valid, and how to fix it. The CLI prints
the message of an ``EdgepruneError`` (no traceback) and exits non-zero; anything else is a bug.
"""

from __future__ import annotations


class EdgepruneError(Exception):
    """Base class of every error edgeprune raises deliberately."""


class ConfigError(EdgepruneError, ValueError):
    """A configuration value or argument is invalid."""


class BudgetBelowFloorError(ConfigError):
    """A budget is below the smallest cost pruning can reach on this model and target.

    ``budget`` and ``floor`` are in ``unit`` (ms or MMACs). A caller sweeping budgets (a
    benchmark) catches this type to record the budget as infeasible and go on; any other
    :class:`ConfigError` is a mistake to stop on.
    """

    def __init__(self, message: str, *, budget: float, floor: float, unit: str) -> None:
        super().__init__(message)
        self.budget, self.floor, self.unit = budget, floor, unit


class ModelNotFoundError(EdgepruneError, KeyError):
    """An architecture name is not in the model zoo."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TargetNotFoundError(EdgepruneError, LookupError):
    """A target name or file does not exist."""


class ProfileError(EdgepruneError):
    """A latency profile is malformed, mismatched, or a measurement failed."""


class CheckpointError(EdgepruneError):
    """A checkpoint file is missing, corrupt, or does not match its architecture."""


class DataError(EdgepruneError):
    """A data source is missing, empty, unreadable, or of the wrong shape/dtype."""


class MissingDependencyError(EdgepruneError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


class ExportError(EdgepruneError):
    """A conversion to a deployment format failed or produced an invalid artifact."""


class RuntimeAdapterError(EdgepruneError):
    """A runtime could not load or run an artifact."""


class ParityError(EdgepruneError):
    """A converted artifact disagrees with PyTorch beyond the tolerance."""
