"""The export bundle for app developers: every artifact, the PyTorch source checkpoint,
model.json and a README (:func:`edgeprune.export` builds one; :class:`Bundle` reads one)."""

from edgeprune.bundle.artifacts import Artifact, ArtifactIO, Bundle, HostLatency, Parity, TensorIO
from edgeprune.bundle.build import FORMATS, ExportConfig, build

__all__ = ["FORMATS", "Artifact", "ArtifactIO", "Bundle", "ExportConfig", "HostLatency", "Parity",
           "TensorIO", "build"]
