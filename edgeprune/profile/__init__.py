"""The hardware-profile layer: targets, end-to-end measurement, per-layer latency tables.

``edgeprune.profile(model, target)`` is this package called as a function: it is
:func:`edgeprune.profile.latency.profile`. The package stays importable as usual
(``from edgeprune.profile import LatencyProfile``).
"""

from edgeprune._callable import make_callable
from edgeprune.profile.latency import LatencyProfile, profile
from edgeprune.profile.measurement import measure
from edgeprune.profile.table import LayerTable
from edgeprune.profile.targets import Target, load_target, target_names

__all__ = ["LatencyProfile", "LayerTable", "Target", "load_target", "measure", "profile",
           "target_names"]

make_callable(__name__, lambda: profile, profile.__doc__ or "")
