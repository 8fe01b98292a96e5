"""edgeprune: make trained PyTorch CNNs fit a millisecond budget on an edge device."""

__version__ = "0.1.0"

from edgeprune import data, export, profile, prune, validate, zoo  # noqa: E402
from edgeprune.checkpoint import ModelSpec, load, read_spec, save  # noqa: E402
from edgeprune.profile import LatencyProfile, Target, load_target, measure  # noqa: E402
from edgeprune.prune import PruneConfig, PruneResult  # noqa: E402
from edgeprune.types import InputSpec, LatencyStats  # noqa: E402

__all__ = ["InputSpec", "LatencyProfile", "LatencyStats", "ModelSpec", "PruneConfig", "PruneResult",
           "Target", "__version__", "data", "export", "load", "load_target", "measure", "profile", "prune", "read_spec", "save", "validate", "zoo"]
