"""The pruner (METHOD.md): label-free multi-student ISTA toward a latency budget.

``edgeprune.prune(model, data, target=..., budget_ratio=...)`` is this package called as a
function: it is :func:`edgeprune.api.prune`, which resolves the target and its latency
profile and runs :func:`edgeprune.prune.pruner.run`. This package itself is pure torch: it
reads a latency table object and never touches a runtime, a file or a device.
"""

from edgeprune._callable import make_callable
from edgeprune.prune.config import PruneConfig
from edgeprune.prune.pruner import PruneResult

__all__ = ["PruneConfig", "PruneResult"]


def _verb():
    from edgeprune.api import prune

    return prune


make_callable(__name__, _verb, "edgeprune.prune(model, data, *, target, ...): see edgeprune.api.prune")
