"""LiteRT (TFLite) adapter: ai-edge-litert's Interpreter, XNNPACK delegate on by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeprune.errors import MissingDependencyError, RuntimeAdapterError
from edgeprune.runtimes.base import Session


class LiteRTSession(Session):
    runtime = "litert"

    def __init__(self, path: Path, *, threads: int, delegate: str = "xnnpack") -> None:
        try:
            import ai_edge_litert
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError as e:
            raise MissingDependencyError("ai-edge-litert is not installed; pip install edgeprune") from e
        self.runtime_version = getattr(ai_edge_litert, "__version__", "unknown")
        self.threads = threads
        self.delegate = delegate
        self.path = path
        resolver = {"xnnpack": OpResolverType.AUTO,  # XNNPACK is LiteRT's default delegate
                    "none": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}.get(delegate)
        if resolver is None:
            raise RuntimeAdapterError(f"LiteRT delegate {delegate!r} is not one of 'xnnpack', 'none'")
        try:
            self._interp = Interpreter(model_path=str(path), num_threads=threads,
                                       experimental_op_resolver_type=resolver)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise RuntimeAdapterError(f"LiteRT cannot load {str(path)!r}: {e}") from e
        ins, outs = self._interp.get_input_details(), self._interp.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise RuntimeAdapterError(f"{str(path)!r} has {len(ins)} inputs / {len(outs)} outputs; "
                                      "edgeprune handles single-input single-output classifiers")
        self._in, self._out = ins[0], outs[0]
        self.input_name, self.output_name = self._in["name"], self._out["name"]
        shape = tuple(int(s) for s in self._in["shape"])
        if len(shape) != 4:
            raise RuntimeAdapterError(f"{str(path)!r} input has shape {shape}; expected 4-D NHWC")
        n, h, w, c = shape
        self.input_shape = (n, c, h, w)
        self.input_dtype = np.dtype(self._in["dtype"])
        self.output_dtype = np.dtype(self._out["dtype"])

    @property
    def input_quantization(self) -> tuple[float, int]:
        return tuple(self._in["quantization"])  # (scale, zero_point); (0.0, 0) when float

    @property
    def output_quantization(self) -> tuple[float, int]:
        return tuple(self._out["quantization"])

    @property
    def has_int8_tensors(self) -> bool:
        """Whether the graph holds int8 tensors (an int8 model, whatever its I/O dtype)."""
        return any(np.dtype(t["dtype"]) == np.int8 for t in self._interp.get_tensor_details())

    def _prepare(self, x: np.ndarray) -> None:
        nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if self.input_dtype != np.float32:
            scale, zp = self.input_quantization
            info = np.iinfo(self.input_dtype)
            nhwc = np.clip(np.round(nhwc / scale) + zp, info.min, info.max).astype(self.input_dtype)
        self._interp.set_tensor(self._in["index"], nhwc)

    def _invoke_prepared(self) -> None:
        self._interp.invoke()

    def run(self, x: np.ndarray) -> np.ndarray:
        self._prepare(self._check(x))
        self._interp.invoke()
        y = self._interp.get_tensor(self._out["index"])
        if self.output_dtype != np.float32:
            scale, zp = self.output_quantization
            y = (y.astype(np.float32) - zp) * scale
        if y.ndim == 4:  # feature-map outputs are NHWC in the artifact; callers get NCHW
            y = y.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(y, dtype=np.float32)


def open_litert(path: Path, *, threads: int = 1, delegate: str = "xnnpack") -> LiteRTSession:
    return LiteRTSession(path, threads=threads, delegate=delegate)
