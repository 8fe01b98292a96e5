"""edgeprune: make trained PyTorch CNNs fit a millisecond budget on an edge device.

The verbs are plain functions (:mod:`edgeprune.api`)::

    prof = edgeprune.profile(model, target="host-litert")
    res = edgeprune.prune(model, data, target="host-litert", budget_ratio=0.5, profile=prof)
    bundle = edgeprune.export(res.model, "out/bundle", data=data)
    report = edgeprune.validate(bundle, test_data)

``import edgeprune`` loads nothing heavy: every name below is imported when first used
(PEP 562), so torch-free modules (``edgeprune.targets``, ``edgeprune.types``) stay torch-free.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgeprune._version import __version__

# public name -> module that defines it
_LAZY = {
    "profile": "edgeprune.api", "measure": "edgeprune.api", "prune": "edgeprune.api",
    "export": "edgeprune.api", "validate": "edgeprune.api", "budget_range": "edgeprune.api",
    "BudgetRange": "edgeprune.api", "check": "edgeprune.api",
    "Budget": "edgeprune.budgets", "BudgetReport": "edgeprune.budgets",
    "load": "edgeprune.models.checkpoint", "save": "edgeprune.models.checkpoint",
    "read_spec": "edgeprune.models.checkpoint", "ModelSpec": "edgeprune.models.checkpoint",
    "InputSpec": "edgeprune.types", "LatencyStats": "edgeprune.types",
    "Target": "edgeprune.targets", "load_target": "edgeprune.targets",
    "LatencyProfile": "edgeprune.profiling.latency",
    "PruneConfig": "edgeprune.pruning.config", "PruneResult": "edgeprune.pruning.result",
    "ExportConfig": "edgeprune.bundle.build", "Bundle": "edgeprune.bundle.artifacts",
    "ValidationReport": "edgeprune.validation.report",
}
# subpackages reachable as attributes (edgeprune.data.open(...)) without an import statement
_SUBMODULES = ("agent", "api", "budgets", "bundle", "convert", "data", "errors", "graph", "models",
               "profiling", "pruning", "reporting", "runtimes", "targets", "train", "types",
               "validation")

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # import once
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"edgeprune.{name}")
    raise AttributeError(f"module 'edgeprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, *_SUBMODULES])
