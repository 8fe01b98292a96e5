"""edgeprune: make trained PyTorch CNNs fit a millisecond budget on an edge device."""

__version__ = "0.1.0"

from edgeprune import data, profile, zoo  # noqa: E402
from edgeprune.checkpoint import ModelSpec, load, read_spec, save  # noqa: E402
from edgeprune.profile import LatencyProfile, Target, load_target, measure  # noqa: E402
from edgeprune.types import InputSpec, LatencyStats  # noqa: E402

__all__ = ["InputSpec", "LatencyProfile", "LatencyStats", "ModelSpec", "Target", "__version__",
           "data", "load", "load_target", "measure", "profile", "read_spec", "save", "zoo"]
