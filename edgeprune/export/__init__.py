"""Converters from PyTorch to deployment formats, and the bundle for app developers.

``edgeprune.export(model, out_dir, formats=..., calibration=...)`` is this package called as
a function: :func:`edgeprune.export.bundle.export` (artifacts + model.json + README).
The single converters ``to_onnx``, ``to_tflite``, ``to_tflite_int8`` and ``to_coreml``
convert a copy of the model in eval mode, write atomically and return the path.
"""

from edgeprune._callable import make_callable
from edgeprune.export.bundle import FORMATS, Artifact, Bundle, export
from edgeprune.export.onnx import to_onnx
from edgeprune.export.tflite import tflite_op_names, to_tflite, to_tflite_int8


def to_coreml(*args, **kwargs):
    """See :func:`edgeprune.export.coreml.to_coreml` (imported on use: coremltools is optional)."""
    from edgeprune.export.coreml import to_coreml as convert

    return convert(*args, **kwargs)


__all__ = ["FORMATS", "Artifact", "Bundle", "export", "tflite_op_names", "to_coreml", "to_onnx",
           "to_tflite", "to_tflite_int8"]

make_callable(__name__, lambda: export, export.__doc__ or "")
