"""The hardware-profile layer: end-to-end measurement on a target's runtime and per-layer
latency tables (a :class:`LatencyProfile`) that predict any pruned variant.

The public verbs are :func:`edgeprune.profile` and :func:`edgeprune.measure`
(:mod:`edgeprune.api`); this package holds what they call.
"""

from edgeprune.profiling.latency import LatencyProfile, dense_copy, host_identity
from edgeprune.profiling.measurement import time_artifact, time_artifacts
from edgeprune.profiling.table import LayerTable

__all__ = ["LatencyProfile", "LayerTable", "dense_copy", "host_identity", "time_artifact",
           "time_artifacts"]
