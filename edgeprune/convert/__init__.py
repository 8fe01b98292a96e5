"""Converters from PyTorch to deployment formats: ONNX, TFLite (fp32, full int8) and CoreML.

Each converts a copy of the model in eval mode (the caller's is untouched), writes
atomically and returns the path; a failure raises :class:`~edgeprune.errors.ExportError`
and leaves no file. coremltools is optional: :func:`to_coreml` imports it when called.
"""

from edgeprune.convert.onnx import to_onnx
from edgeprune.convert.tflite import simulate_int8, tflite_op_names, to_tflite, to_tflite_int8


def to_coreml(*args, **kwargs):
    """See :func:`edgeprune.convert.coreml.to_coreml` (imported on use: coremltools is optional)."""
    from edgeprune.convert.coreml import to_coreml as convert

    return convert(*args, **kwargs)


__all__ = ["simulate_int8", "tflite_op_names", "to_coreml", "to_onnx", "to_tflite", "to_tflite_int8"]
