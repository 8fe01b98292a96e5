"""edgeprune: make trained PyTorch CNNs fit a millisecond budget on an edge device."""

__version__ = "0.1.0"

from edgeprune import data, zoo  # noqa: E402
from edgeprune.checkpoint import ModelSpec, load, read_spec, save  # noqa: E402
from edgeprune.types import InputSpec, LatencyStats  # noqa: E402

__all__ = ["InputSpec", "LatencyStats", "ModelSpec", "__version__", "data", "load", "read_spec",
           "save", "zoo"]
