"""The pruner (METHOD.md): label-free multi-student ISTA toward a latency budget.

The public verb is :func:`edgeprune.prune` (:mod:`edgeprune.api`), which resolves the target
and its latency profile and runs :class:`~edgeprune.pruning.pruner.Pruner`. This package is
pure torch: it reads a latency table object and never touches a runtime, a file or a device.
"""

from edgeprune.pruning.config import PruneConfig
from edgeprune.pruning.cost import Cost, LatencyCost, MacsCost
from edgeprune.pruning.pruner import Pruner, run
from edgeprune.pruning.result import PruneResult

__all__ = ["Cost", "LatencyCost", "MacsCost", "PruneConfig", "PruneResult", "Pruner", "run"]
