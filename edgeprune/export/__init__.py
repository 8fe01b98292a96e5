"""Converters from PyTorch to deployment formats.

``to_onnx(model, path, example_input)`` and ``to_tflite(model, path, example_input)`` convert a
copy of the model in eval mode, write atomically, and return the path.
"""

from edgeprune.export.onnx import to_onnx
from edgeprune.export.tflite import tflite_op_names, to_tflite

__all__ = ["tflite_op_names", "to_onnx", "to_tflite"]
