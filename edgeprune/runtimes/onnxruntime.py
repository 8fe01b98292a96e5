"""ONNX Runtime adapter: CPU execution provider, a fixed thread count, no spinning."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeprune.agent import onnx_session_options
from edgeprune.errors import MissingDependencyError, RuntimeAdapterError
from edgeprune.runtimes.base import Session


class OnnxRuntimeSession(Session):
    runtime = "onnxruntime"

    def __init__(self, path: Path, *, threads: int, delegate: str = "cpu") -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise MissingDependencyError("onnxruntime is not installed; pip install edgeprune") from e
        self.runtime_version = ort.__version__
        if delegate != "cpu":
            raise RuntimeAdapterError(f"ONNX Runtime delegate {delegate!r} is not 'cpu' (the only "
                                      "execution provider edgeprune measures)")
        self.threads = threads
        self.delegate = delegate
        self.path = path
        try:
            self._sess = ort.InferenceSession(str(path), onnx_session_options(ort, threads),
                                              providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise RuntimeAdapterError(f"ONNX Runtime cannot load {str(path)!r}: {e}") from e
        ins, outs = self._sess.get_inputs(), self._sess.get_outputs()
        if len(ins) != 1 or len(outs) != 1:
            raise RuntimeAdapterError(f"{str(path)!r} has {len(ins)} inputs / {len(outs)} outputs; "
                                      "edgeprune handles single-input single-output classifiers")
        self._in_name, self._out_name = ins[0].name, outs[0].name
        self.input_name, self.output_name = self._in_name, self._out_name
        shape = tuple(d if isinstance(d, int) else -1 for d in ins[0].shape)
        if len(shape) != 4:
            raise RuntimeAdapterError(f"{str(path)!r} input has shape {ins[0].shape}; expected 4-D NCHW")
        self.input_shape = shape
        self._x: np.ndarray | None = None

    def _prepare(self, x: np.ndarray) -> None:
        self._x = x

    def _invoke_prepared(self) -> None:
        self._sess.run([self._out_name], {self._in_name: self._x})

    def run(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        try:
            (y,) = self._sess.run([self._out_name], {self._in_name: x})
        except Exception as e:  # onnxruntime raises its own types
            raise RuntimeAdapterError(f"ONNX Runtime failed on {str(self.path)!r}: {e}") from e
        return np.asarray(y, dtype=np.float32)


def open_onnxruntime(path: Path, *, threads: int = 1, delegate: str = "cpu") -> OnnxRuntimeSession:
    return OnnxRuntimeSession(path, threads=threads, delegate=delegate)
