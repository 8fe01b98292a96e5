"""Derive a single-layer ``.tflite`` at new channel widths from one the converter made.

A latency profile times the same one-layer model (conv, depthwise conv or linear, with its
BatchNorm and ReLU folded in) at many widths. litert-torch takes about a second for each,
although the files differ only in tensor shapes and weight bytes. :func:`resize_tflite`
rewrites a converted *template* (widths chosen so that no other dimension of the graph has
the same size) to new widths: every tensor dimension equal to a template width takes the new
width, constant data (weights, biases) is refilled from the template's own values, repeated
to the new size, and per-channel quantization arrays follow their channel axis. Ops, options,
wiring, dtypes and metadata stay the converter's.

That is only as good as the claim that the converter would have emitted the same graph at
the new width. :func:`tflite_structure` reads what a runtime's choice of kernels depends on
(op codes and versions, options, wiring, shapes, dtypes, constant sizes, quantization
layout), leaving out values (weights, scales, names); the profiler compares a derived file
with a real conversion at the same width before it derives the rest of a signature's
points, and converts them all when the two differ.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune._io import atomic_path
from edgeprune.errors import ExportError

_NUMPY = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_,
          7: np.int16, 9: np.int8, 10: np.float64, 12: np.uint64, 15: np.uint32, 16: np.uint16}
_QUANT_ARRAYS = ("scale", "zeroPoint", "min", "max")


def _integers(v: Any) -> set[int]:
    """The integer values of an option field (a number or a list of them; bools and floats are
    not widths)."""
    vals = v.ravel().tolist() if isinstance(v, np.ndarray) else v if isinstance(v, list) else [v]
    return {int(x) for x in vals if isinstance(x, (int, np.integer)) and not isinstance(x, bool)}


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError as e:  # pragma: no cover - ai-edge-litert is a core dependency
        from edgeprune.errors import MissingDependencyError

        raise MissingDependencyError("ai-edge-litert is not installed; pip install edgeprune") from e
    return schema


def _read(path: str | os.PathLike):
    return _schema().ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)


def resize_tflite(src: str | os.PathLike, dst: str | os.PathLike, widths: Mapping[int, int]) -> Path:
    """Write ``src`` to ``dst`` with every tensor dimension ``w`` in ``widths`` set to
    ``widths[w]``. Raises :class:`ExportError` for a graph this cannot rewrite faithfully: a
    constant whose values (not only its size) hold a template width, a constant shared by
    tensors, option fields equal to a template width, or data stored outside the file."""
    import flatbuffers

    model = _read(src)
    where = Path(src).name
    old = set(widths)
    users = Counter(t.buffer for g in model.subgraphs or [] for t in g.tensors or [])
    for g in model.subgraphs or []:
        for i, op in enumerate(g.operators or []):
            opts = vars(op.builtinOptions) if op.builtinOptions is not None else {}
            for k, v in opts.items():
                if old & _integers(v):
                    raise ExportError(f"{where}: option {k} of operator {i} holds a template width; "
                                      "convert this layer directly")
    for g in model.subgraphs or []:
        for t in g.tensors or []:
            shape = [int(d) for d in (t.shape if t.shape is not None else [])]
            new_shape = [int(widths.get(d, d)) for d in shape]
            buf = model.buffers[t.buffer]
            if buf.offset or buf.size:
                raise ExportError(f"{where}: tensor {t.name!r} keeps its data outside the flatbuffer")
            if buf.data is not None and len(buf.data):
                if users[t.buffer] > 1:
                    raise ExportError(f"{where}: constant buffer {t.buffer} is shared by tensors")
                if t.type not in _NUMPY:
                    raise ExportError(f"{where}: tensor {t.name!r} has type {t.type}, not rewritable")
                values = np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), _NUMPY[t.type])
                if values.size != int(np.prod(shape, dtype=np.int64)):
                    raise ExportError(f"{where}: tensor {t.name!r} holds {values.size} values for shape {shape}")
                if new_shape == shape:
                    if values.dtype.kind in "iu" and old & {int(v) for v in values}:
                        raise ExportError(f"{where}: constant {t.name!r} holds a template width as a "
                                          "value (a shape?); convert this layer directly")
                else:
                    refill = np.resize(values, int(np.prod(new_shape, dtype=np.int64)))
                    buf.data = np.frombuffer(refill.astype(values.dtype).tobytes(), np.uint8)
            q = t.quantization
            if q is not None and shape and new_shape != shape:
                axis = int(q.quantizedDimension or 0)
                for name in _QUANT_ARRAYS:
                    arr = getattr(q, name)
                    if arr is not None and len(arr) > 1:
                        if axis >= len(shape) or len(arr) != shape[axis]:
                            raise ExportError(f"{where}: quantization {name} of {t.name!r} has {len(arr)} "
                                              f"entries, not one per channel of axis {axis}")
                        setattr(q, name, np.resize(np.asarray(arr), new_shape[axis]))
            t.shape = np.asarray(new_shape, np.int32)
            if t.shapeSignature is not None and len(t.shapeSignature):
                t.shapeSignature = np.asarray([int(widths.get(int(d), int(d))) for d in t.shapeSignature],
                                              np.int32)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        Path(tmp).write_bytes(bytes(builder.Output()))
    return dst


def tflite_structure(path: str | os.PathLike) -> dict[str, Any]:
    """What a runtime's choice of kernels can depend on, as plain data: op codes and
    versions; each operator's wiring and options; each tensor's shape, dtype, constant size
    and quantization layout (axis, number of scales); the graph's inputs, outputs,
    signatures and metadata. Values (weights, scales, zero points) and names are left out."""
    m = _read(path)

    def plain(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if hasattr(v, "__dict__"):
            return {k: plain(x) for k, x in sorted(vars(v).items())}
        return v.item() if isinstance(v, np.generic) else v

    def tensor(t) -> dict[str, Any]:
        buf = m.buffers[t.buffer]
        q = t.quantization
        return {"shape": plain(t.shape), "shape_signature": plain(t.shapeSignature), "type": t.type,
                "constant_bytes": 0 if buf.data is None else len(buf.data), "variable": t.isVariable,
                "sparsity": t.sparsity is not None,
                "quantization": None if q is None else {
                    "axis": q.quantizedDimension,
                    **{n: None if getattr(q, n) is None else len(getattr(q, n)) for n in _QUANT_ARRAYS}}}

    return {
        "version": m.version,
        "op_codes": [(o.builtinCode, o.deprecatedBuiltinCode, o.version, o.customCode) for o in m.operatorCodes],
        "subgraphs": [{"inputs": plain(g.inputs), "outputs": plain(g.outputs),
                       "tensors": [tensor(t) for t in g.tensors],
                       "operators": [{"op": o.opcodeIndex, "inputs": plain(o.inputs), "outputs": plain(o.outputs),
                                      "options_type": o.builtinOptionsType, "options": plain(o.builtinOptions),
                                      "custom": plain(o.customOptions)}
                                     for o in g.operators]} for g in m.subgraphs],
        "signatures": [plain(s) for s in (m.signatureDefs or [])],
        "metadata": {bytes(x.name).decode() if isinstance(x.name, bytes) else x.name:
                     plain(m.buffers[x.buffer].data) for x in (m.metadata or [])},
    }
