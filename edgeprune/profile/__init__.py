"""The hardware-profile layer: targets, end-to-end measurement, per-layer latency tables."""

from edgeprune.profile.measurement import measure
from edgeprune.profile.latency import LatencyProfile, profile
from edgeprune.profile.table import LayerTable
from edgeprune.profile.targets import Target, load_target, target_names

__all__ = ["LatencyProfile", "LayerTable", "Target", "load_target", "measure", "profile",
           "target_names"]
