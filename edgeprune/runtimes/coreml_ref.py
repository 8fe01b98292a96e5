"""A numpy reference interpreter for CoreML ML programs (``.mlpackage``).

coremltools cannot run a model off macOS, so a saved package is checked here instead: the model
spec (the protobuf named by ``Manifest.json``, ``Data/com.apple.CoreML/model.mlmodel``) is
parsed with ``coremltools.proto``, every ``const`` is read from its immediate value or from the
package's weight file (``weights/weight.bin``, MIL blob storage v2: a 64-byte header, then per
blob a 64-byte record ``sentinel 0xDEADBEEF, dtype, size, offset`` and 64-byte aligned data),
and the ``main`` function is evaluated op by op.

Precision: tensors the program declares fp16 are *stored* as float16 -- every op output is
rounded (round-to-nearest-even) to the dtype the program declares for it, and fp16 constants
keep their fp16 values -- while each op *computes* in float32 from those fp16 values (fp16
storage with fp32 accumulation, as CoreML's GPU does; the Neural Engine may accumulate
differently, so compare fp16 packages with a tolerance, not exactly).

Errors:

* :class:`UnsupportedOpError` -- the program uses an op (or a feature of an op, or a kind of
  program) this interpreter does not cover (see :data:`SUPPORTED_OPS`). Nothing was checked:
  report the artifact as "not checked", never as "pass". It is raised before anything runs.
* :class:`~edgeprune.errors.ParityError` -- the package is corrupt or malformed: a missing or
  unparsable spec or weight file, a weight file whose SHA-256 differs from the one
  :func:`edgeprune.convert.coreml.to_coreml` recorded in the metadata, a blob record with a bad
  sentinel, dtype or size, or an op whose computed shape differs from the declared one. The
  artifact fails validation.
* :class:`~edgeprune.errors.DataError` -- the input array has the wrong shape.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import DataError, EdgepruneError, MissingDependencyError, ParityError

__all__ = ["SUPPORTED_OPS", "MLProgram", "UnsupportedOpError", "load_mlpackage",
           "mlpackage_metadata", "run_mlpackage"]


class UnsupportedOpError(EdgepruneError):
    """The ML program uses an op or feature the reference interpreter does not cover; the
    artifact is "not checked" (neither pass nor fail)."""


_BLOB_SENTINEL = 0xDEADBEEF
_BLOB_ALIGN = 64
# MILBlob BlobDataType codes -> numpy dtype (MILBlob/Blob/BlobDataType.hpp)
_BLOB_DTYPES = {1: np.float16, 2: np.float32, 3: np.uint8, 4: np.int8, 6: np.int16,
                7: np.uint16, 14: np.int32, 15: np.uint32}
_WEIGHTS_HASH_KEY = "weights_sha256"


def _proto():
    try:
        from coremltools.proto import MIL_pb2, Model_pb2
    except ImportError as e:
        raise MissingDependencyError(
            "coremltools is not installed; pip install 'edgeprune[coreml]'") from e
    return MIL_pb2, Model_pb2


@functools.lru_cache(maxsize=1)
def _mil_dtypes() -> dict[int, Any]:
    mil, _ = _proto()
    d = mil.DataType
    return {d.FLOAT16: np.float16, d.FLOAT32: np.float32, d.FLOAT64: np.float64,
            d.INT8: np.int8, d.INT16: np.int16, d.INT32: np.int32, d.INT64: np.int64,
            d.UINT8: np.uint8, d.UINT16: np.uint16, d.UINT32: np.uint32, d.UINT64: np.uint64,
            d.BOOL: np.bool_, d.STRING: np.str_}


# --------------------------------------------------------------------------- package reading


def _read_spec(path: str | os.PathLike):
    """The parsed Model protobuf and the folder its relative paths start from."""
    _, model_pb2 = _proto()
    path = Path(path)
    if not path.is_dir():
        raise ParityError(f"CoreML package {str(path)!r} does not exist or is not a folder; "
                          "pass the .mlpackage folder to_coreml wrote")
    try:
        manifest = json.loads((path / "Manifest.json").read_text())
        rel = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ParityError(f"CoreML package {str(path)!r} has no readable Manifest.json root "
                          f"model entry ({type(e).__name__}: {e}); re-export it") from e
    spec_path = (path / "Data" / rel).resolve()
    if not spec_path.is_relative_to(path.resolve()) or not spec_path.is_file():
        raise ParityError(f"CoreML package {str(path)!r}: model spec {rel!r} named by "
                          "Manifest.json is missing; re-export it")
    spec = model_pb2.Model()
    try:
        spec.ParseFromString(spec_path.read_bytes())
    except Exception as e:  # protobuf's DecodeError and friends
        raise ParityError(f"CoreML package {str(path)!r}: model spec {str(spec_path)!r} is not "
                          f"a valid Model protobuf ({e}); re-export it") from e
    return spec, spec_path.parent


def mlpackage_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The package's user-defined metadata (string -> string; edgeprune stores lists such as
    ``mean``, ``std`` and ``class_names`` as JSON). Raises :class:`ParityError` on a malformed
    package."""
    spec, _ = _read_spec(path)
    return dict(spec.description.metadata.userDefined)


class _Weights:
    """The package's weight files, read lazily and checked record by record."""

    def __init__(self, root: Path, package: Path, expected_sha256: str | None) -> None:
        self.root, self.package, self.expected = root, package, expected_sha256
        self.files: dict[str, bytes] = {}

    def _file(self, name: str) -> bytes:
        if name in self.files:
            return self.files[name]
        if not name.startswith("@model_path/"):
            raise ParityError(f"CoreML package {str(self.package)!r}: weight file name {name!r} "
                              "does not start with @model_path/; re-export it")
        p = (self.root / name[len("@model_path/"):]).resolve()
        if not p.is_relative_to(self.root.resolve()) or not p.is_file():
            raise ParityError(f"CoreML package {str(self.package)!r}: weight file {name!r} is "
                              "missing; re-export it")
        buf = p.read_bytes()
        if self.expected is not None and p.name == "weight.bin":
            got = hashlib.sha256(buf).hexdigest()
            if got != self.expected:
                raise ParityError(
                    f"CoreML package {str(self.package)!r}: weights/weight.bin has SHA-256 "
                    f"{got[:16]}..., the export recorded {self.expected[:16]}...; the weights are "
                    "corrupted, re-export the model")
        if len(buf) < 64:
            raise ParityError(f"CoreML package {str(self.package)!r}: weight file {name!r} is "
                              f"{len(buf)} bytes, shorter than its 64-byte header")
        count, version = struct.unpack_from("<II", buf, 0)
        if version != 2:
            raise ParityError(f"CoreML package {str(self.package)!r}: weight file {name!r} has "
                              f"storage version {version}, expected 2 (count {count})")
        self.files[name] = buf
        return buf

    def read(self, name: str, offset: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        buf = self._file(name)
        where = f"CoreML package {str(self.package)!r}: blob at offset {offset} of {name!r}"
        if offset % _BLOB_ALIGN or offset + 64 > len(buf):
            raise ParityError(f"{where} is out of range (file is {len(buf)} bytes)")
        sentinel, code, size, data_offset = struct.unpack_from("<IIQQ", buf, offset)
        if sentinel != _BLOB_SENTINEL:
            raise ParityError(f"{where} has sentinel {sentinel:#x}, expected {_BLOB_SENTINEL:#x}; "
                              "the weight file is corrupted")
        blob_dtype = _BLOB_DTYPES.get(code)
        if blob_dtype is None or np.dtype(blob_dtype) != np.dtype(dtype):
            raise ParityError(f"{where} has blob dtype code {code} but the program declares "
                              f"{np.dtype(dtype).name}; the weight file is corrupted")
        n = int(np.prod(shape, dtype=np.int64))
        if size != n * np.dtype(dtype).itemsize or data_offset % _BLOB_ALIGN or \
                data_offset + size > len(buf):
            raise ParityError(f"{where} records {size} bytes at {data_offset}, the program needs "
                              f"{n} x {np.dtype(dtype).name}; the weight file is corrupted")
        return np.frombuffer(buf, dtype=dtype, count=n, offset=data_offset).reshape(shape)


# --------------------------------------------------------------------------- values


def _tensor_type(vt, where: str) -> tuple[Any, tuple[int, ...] | None]:
    """(numpy dtype, shape or None if not fully known) of a MIL ValueType."""
    kind = vt.WhichOneof("type")
    if kind != "tensorType":
        raise UnsupportedOpError(f"{where}: value type {kind!r} is not covered by the reference "
                                 "interpreter (only tensors are)")
    tt = vt.tensorType
    dtype = _mil_dtypes().get(tt.dataType)
    if dtype is None:
        mil, _ = _proto()
        raise UnsupportedOpError(f"{where}: dtype {mil.DataType.Name(tt.dataType)} is not covered "
                                 "by the reference interpreter")
    dims = []
    for d in tt.dimensions:
        if d.WhichOneof("dimension") != "constant":
            return dtype, None
        dims.append(int(d.constant.size))
    return dtype, tuple(dims)


def _decode(value, weights: _Weights, where: str) -> Any:
    dtype, shape = _tensor_type(value.type, where)
    kind = value.WhichOneof("value")
    if shape is None:
        raise ParityError(f"{where}: constant has no fixed shape; the package is malformed")
    if kind == "blobFileValue":
        return weights.read(value.blobFileValue.fileName, int(value.blobFileValue.offset),
                            dtype, shape)
    if kind != "immediateValue" or value.immediateValue.WhichOneof("value") != "tensor":
        raise UnsupportedOpError(f"{where}: constant of kind {kind!r} is not covered by the "
                                 "reference interpreter")
    t = value.immediateValue.tensor
    field = t.WhichOneof("value")
    n = int(np.prod(shape, dtype=np.int64))
    if field is None:
        vals: Any = np.zeros(0, dtype=dtype)
    elif field == "bytes":
        vals = np.frombuffer(t.bytes.values, dtype=dtype)
    elif field == "strings":
        vals = np.array(list(t.strings.values), dtype=object)
    else:
        vals = np.array(list(getattr(t, field).values), dtype=dtype)
    if vals.size != n:
        raise ParityError(f"{where}: constant holds {vals.size} values for shape {list(shape)}; "
                          "the package is malformed")
    if dtype is np.str_:
        return str(vals[0]) if shape == () else vals.reshape(shape)
    return vals.reshape(shape)


# --------------------------------------------------------------------------- op kernels


class _Op:
    """One MIL operation's resolved inputs, with defaults and compute-dtype conversion."""

    def __init__(self, proto, env: dict[str, Any], weights: _Weights) -> None:
        self.proto, self.env, self.weights = proto, env, weights
        self.type = proto.type
        self.name = proto.outputs[0].name if proto.outputs else "?"

    def has(self, key: str) -> bool:
        return key in self.proto.inputs and len(self.proto.inputs[key].arguments) > 0

    def _resolve(self, binding) -> Any:
        if binding.WhichOneof("binding") == "name":
            return self.env[binding.name]
        return _decode(binding.value, self.weights, f"op {self.type} {self.name!r}")

    def all(self, key: str) -> list[Any]:
        return [_compute(self._resolve(b)) for b in self.proto.inputs[key].arguments]

    def get(self, key: str, default: Any = ...) -> Any:
        if not self.has(key):
            if default is ...:
                raise ParityError(f"op {self.type} {self.name!r} lacks its required input "
                                  f"{key!r}; the package is malformed")
            return default
        args = self.proto.inputs[key].arguments
        if len(args) != 1:
            raise ParityError(f"op {self.type} {self.name!r} input {key!r} has {len(args)} "
                              "arguments, expected 1; the package is malformed")
        return _compute(self._resolve(args[0]))

    def ints(self, key: str, default: Any = ...) -> tuple[int, ...]:
        v = self.get(key, default)
        return tuple(int(i) for i in np.asarray(v).reshape(-1))

    def scalar(self, key: str, default: Any = ...) -> Any:
        v = self.get(key, default)
        return np.asarray(v).reshape(()).item() if isinstance(v, np.ndarray) else v

    def unsupported(self, what: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"op {self.type} {self.name!r}: {what} is not covered by the "
                                  "reference interpreter")


def _compute(v: Any) -> Any:
    """fp16 tensors are computed on in float32 (their values are exact in float32)."""
    if isinstance(v, np.ndarray) and v.dtype == np.float16:
        return v.astype(np.float32)
    return v


def _spatial_pads(op: _Op, in_hw: tuple[int, ...], k: tuple[int, ...], s: tuple[int, ...],
                  d: tuple[int, ...]) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dim for MIL pad_type valid/custom/same/same_lower."""
    pad_type = op.scalar("pad_type", "valid")
    nd = len(in_hw)
    if pad_type == "valid":
        return [(0, 0)] * nd
    if pad_type == "custom":
        p = op.ints("pad", (0,) * 2 * nd)
        if len(p) != 2 * nd:
            raise ParityError(f"op {op.type} {op.name!r}: pad {list(p)} needs {2 * nd} values")
        return [(p[2 * i], p[2 * i + 1]) for i in range(nd)]
    if pad_type in ("same", "same_lower"):
        out = []
        for i in range(nd):
            eff = (k[i] - 1) * d[i] + 1
            total = max(0, (-(-in_hw[i] // s[i]) - 1) * s[i] + eff - in_hw[i])
            small, big = total // 2, total - total // 2
            out.append((small, big) if pad_type == "same" else (big, small))
        return out
    raise op.unsupported(f"pad_type {pad_type!r}")


def _windows(xp: np.ndarray, i: int, j: int, dh: int, dw: int, sh: int, sw: int, ho: int,
             wo: int) -> np.ndarray:
    return xp[:, :, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw]


def _conv(op: _Op) -> np.ndarray:
    x, w = op.get("x"), op.get("weight")
    if x.ndim != 4 or w.ndim != 4:
        raise op.unsupported(f"a {x.ndim - 2}-D convolution (only 2-D is)")
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    groups = int(op.scalar("groups", 1))
    sh, sw = op.ints("strides", (1, 1))
    dh, dw = op.ints("dilations", (1, 1))
    if groups < 1 or c % groups or o % groups or c // groups != cg:
        raise ParityError(f"op conv {op.name!r}: weight {list(w.shape)} and groups {groups} do not "
                          f"fit input {list(x.shape)}; the package is malformed")
    (pt, pb), (pl, pr) = _spatial_pads(op, (h, wd), (kh, kw), (sh, sw), (dh, dw))
    ho = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    wo = (wd + pl + pr - (kw - 1) * dw - 1) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    if groups == c and cg == 1 and o == c:  # depthwise: a weighted sum of shifted windows
        out = np.zeros((n, o, ho, wo), np.float32)
        for i in range(kh):
            for j in range(kw):
                out += _windows(xp, i, j, dh, dw, sh, sw, ho, wo) * w[None, :, 0, i, j, None, None]
    else:  # im2col, one matrix product per group
        cols = np.empty((n, c, kh, kw, ho, wo), np.float32)
        for i in range(kh):
            for j in range(kw):
                cols[:, :, i, j] = _windows(xp, i, j, dh, dw, sh, sw, ho, wo)
        og = o // groups
        out = np.empty((n, o, ho * wo), np.float32)
        for g in range(groups):
            col = cols[:, g * cg:(g + 1) * cg].reshape(n, cg * kh * kw, ho * wo)
            out[:, g * og:(g + 1) * og] = w[g * og:(g + 1) * og].reshape(og, -1) @ col
        out = out.reshape(n, o, ho, wo)
    if op.has("bias"):
        out = out + op.get("bias").reshape(1, o, 1, 1)
    return out


def _pool(op: _Op) -> np.ndarray:
    x = op.get("x")
    if x.ndim != 4:
        raise op.unsupported(f"{x.ndim - 2}-D pooling (only 2-D is)")
    h, w = x.shape[2:]
    kh, kw = op.ints("kernel_sizes")
    sh, sw = op.ints("strides", (1, 1))
    pads = _spatial_pads(op, (h, w), (kh, kw), (sh, sw), (1, 1))
    ceil = bool(op.scalar("ceil_mode", False))
    outs, extra = [], []
    for size, k, s, (a, b) in zip((h, w), (kh, kw), (sh, sw), pads, strict=True):
        p = a + b
        if ceil:  # coremltools' ceil-mode rule (spatial_dimensions_out_shape)
            o = (size + p - k + s - 1) // s + 1
            if (o - 1) * s >= size + p / 2 and p > 0:
                o -= 1
        else:
            o = (size + p - k) // s + 1
        outs.append(o)
        extra.append(max(0, (o - 1) * s + k - (size + p)))  # ceil-mode overhang past the pad
    (ho, wo), (pt, pb), (pl, pr) = outs, pads[0], pads[1]
    widths = ((0, 0), (0, 0), (pt, pb + extra[0]), (pl, pr + extra[1]))
    if op.type == "max_pool":
        xp = np.pad(x, widths, constant_values=-np.inf)
        out = np.full(x.shape[:2] + (ho, wo), -np.inf, np.float32)
        for i in range(kh):
            for j in range(kw):
                np.maximum(out, _windows(xp, i, j, 1, 1, sh, sw, ho, wo), out=out)
        return out
    xp = np.pad(x, widths)
    # the divisor counts real elements, plus the explicit padding unless excluded; never the
    # ceil-mode overhang (as in PyTorch)
    exclude = bool(op.scalar("exclude_padding_from_average", False))
    mask = np.zeros((1, 1, h + pt + pb + extra[0], w + pl + pr + extra[1]), np.float32)
    if exclude:
        mask[:, :, pt:pt + h, pl:pl + w] = 1
    else:
        mask[:, :, :h + pt + pb, :w + pl + pr] = 1
    total = np.zeros(x.shape[:2] + (ho, wo), np.float32)
    count = np.zeros((1, 1, ho, wo), np.float32)
    for i in range(kh):
        for j in range(kw):
            total += _windows(xp, i, j, 1, 1, sh, sw, ho, wo)
            count += _windows(mask, i, j, 1, 1, sh, sw, ho, wo)
    return total / np.maximum(count, 1)


def _reduce(fn: Callable[..., np.ndarray]) -> Callable[[_Op], np.ndarray]:
    def run(op: _Op) -> np.ndarray:
        x = op.get("x")
        axes = op.get("axes", None)
        axes = None if axes is None else tuple(int(a) for a in np.asarray(axes).reshape(-1))
        return fn(x, axis=axes, keepdims=bool(op.scalar("keep_dims", False)))
    return run


def _reshape(op: _Op) -> np.ndarray:
    x, shape = op.get("x"), list(op.ints("shape"))
    if len(shape) == x.ndim:
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _flatten2d(op: _Op) -> np.ndarray:
    x = op.get("x")
    axis = int(op.scalar("axis", 1)) % (x.ndim + 1)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _matmul(op: _Op) -> np.ndarray:
    x, y = op.get("x"), op.get("y")
    if op.scalar("transpose_x", False):
        x = np.swapaxes(x, -1, -2)
    if op.scalar("transpose_y", False):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _linear(op: _Op) -> np.ndarray:
    x, w = op.get("x"), op.get("weight")
    out = x @ w.T
    return out + op.get("bias") if op.has("bias") else out


def _pad(op: _Op) -> np.ndarray:
    x, p = op.get("x"), op.ints("pad")
    mode = op.scalar("mode", "constant")
    nd = len(p) // 2
    if len(p) % 2 or nd > x.ndim:
        raise ParityError(f"op pad {op.name!r}: pad {list(p)} does not fit rank {x.ndim}")
    widths = [(0, 0)] * (x.ndim - nd) + [(p[2 * i], p[2 * i + 1]) for i in range(nd)]
    if mode == "constant":
        return np.pad(x, widths, constant_values=float(op.scalar("constant_val", 0.0)))
    if mode in ("reflect", "replicate"):
        return np.pad(x, widths, mode="reflect" if mode == "reflect" else "edge")
    raise op.unsupported(f"pad mode {mode!r}")


def _concat(op: _Op) -> np.ndarray:
    values, axis = op.all("values"), int(op.scalar("axis"))
    if not op.scalar("interleave", False):
        return np.concatenate(values, axis=axis)
    axis = axis % values[0].ndim
    stacked = np.stack(values, axis=axis + 1)
    shape = list(values[0].shape)
    shape[axis] *= len(values)
    return stacked.reshape(shape)


def _batch_norm(op: _Op) -> np.ndarray:
    x = op.get("x")
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = 1.0 / np.sqrt(op.get("variance") + float(op.scalar("epsilon", 1e-5)))
    return _gamma_beta(op, (x - op.get("mean").reshape(shape)) * scale.reshape(shape), shape)


def _gamma_beta(op: _Op, out: np.ndarray, shape) -> np.ndarray:
    """A normalisation's optional scale and shift, broadcast as ``shape``."""
    if op.has("gamma"):
        out = out * op.get("gamma").reshape(shape)
    if op.has("beta"):
        out = out + op.get("beta").reshape(shape)
    return out


def _softmax(op: _Op) -> np.ndarray:
    x, axis = op.get("x"), int(op.scalar("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


_CAST = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int32": np.int32,
         "int16": np.int16, "uint16": np.uint16, "int8": np.int8, "uint8": np.uint8,
         "bool": np.bool_}


def _cast(op: _Op) -> np.ndarray:
    x, dtype = op.get("x"), op.scalar("dtype")
    if dtype not in _CAST:
        raise op.unsupported(f"cast to {dtype!r}")
    return np.asarray(x).astype(_CAST[dtype])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp overflow to inf gives the right limit, 0
        return 1.0 / (1.0 + np.exp(-x))


def _leaky_relu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x >= 0, x, x * alpha)


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[_Op], np.ndarray]:
    return lambda op: fn(op.get("x"))


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[_Op], np.ndarray]:
    return lambda op: fn(op.get("x"), op.get("y"))


def _erf(x: np.ndarray) -> np.ndarray:
    import torch  # numpy has no erf; torch is an edgeprune dependency

    return torch.special.erf(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()


def _gelu(op: _Op) -> np.ndarray:
    x, mode = op.get("x"), str(op.scalar("mode", "EXACT"))
    if mode == "EXACT":
        return 0.5 * x * (1 + _erf(x / np.sqrt(2.0)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid(1.702 * x)
    raise op.unsupported(f"gelu mode {mode!r}")


def _layer_norm(op: _Op) -> np.ndarray:
    x = op.get("x")
    axes = tuple(a % x.ndim for a in op.ints("axes", tuple(range(x.ndim))))
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return _gamma_beta(op, (x - mean) / np.sqrt(var + float(op.scalar("epsilon", 1e-5))), shape)


def _thresholded_relu(op: _Op) -> np.ndarray:
    x = op.get("x")
    return np.where(x < op.scalar("alpha", 1.0), np.zeros_like(x), x)


def _split(op: _Op) -> tuple[np.ndarray, ...]:
    x, axis = op.get("x"), int(op.scalar("axis"))
    if op.has("split_sizes"):
        sizes = [int(v) for v in np.ravel(op.get("split_sizes"))]
    else:
        n = int(op.scalar("num_splits"))
        if x.shape[axis] % n:
            raise op.unsupported(f"num_splits {n} of an axis of {x.shape[axis]} (uneven)")
        sizes = [x.shape[axis] // n] * n
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def _slice_by_index(op: _Op) -> np.ndarray:
    x = op.get("x")
    r = x.ndim
    begin, end = np.ravel(op.get("begin")), np.ravel(op.get("end"))
    stride = np.ravel(op.get("stride")) if op.has("stride") else np.ones(r, np.int64)
    masks = {k: (np.ravel(op.get(k)) if op.has(k) else np.zeros(r, bool))
             for k in ("begin_mask", "end_mask", "squeeze_mask")}
    index: list[Any] = []
    for i in range(r):
        if masks["squeeze_mask"][i]:
            index.append(int(begin[i]))
            continue
        index.append(slice(None if masks["begin_mask"][i] else int(begin[i]),
                           None if masks["end_mask"][i] else int(end[i]), int(stride[i])))
    return x[tuple(index)]


def _slice_by_size(op: _Op) -> np.ndarray:
    x = op.get("x")
    begin, size = np.ravel(op.get("begin")), np.ravel(op.get("size"))
    return x[tuple(slice(int(b), None if int(n) == -1 else int(b) + int(n))
                   for b, n in zip(begin, size, strict=True))]


def _scale_factors(op: _Op) -> tuple[float, float]:
    return float(op.scalar("scale_factor_height", 1)), float(op.scalar("scale_factor_width", 1))


def _upsample_nearest(op: _Op) -> np.ndarray:
    x = op.get("x")
    fh, fw = _scale_factors(op)
    if fh != int(fh) or fw != int(fw) or fh < 1 or fw < 1:
        raise op.unsupported(f"scale factors {fh} x {fw} (only whole ones are)")
    return np.repeat(np.repeat(x, int(fh), axis=-2), int(fw), axis=-1)


def _linear_weights(n_in: int, n_out: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source rows i0, i1 and the weight of i1 for each output row (MIL's grid)."""
    i = np.arange(n_out, dtype=np.float64)
    if align_corners:
        pos = i * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        spacing = n_in / n_out
        pos = i * spacing + 0.5 * spacing - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def _upsample_bilinear(op: _Op) -> np.ndarray:
    x = op.get("x")
    fh, fw = _scale_factors(op)
    h, w = x.shape[-2:]
    ho, wo = int(np.floor(h * fh)), int(np.floor(w * fw))
    align = bool(op.scalar("align_corners", True))
    a0, a1, wa = _linear_weights(h, ho, align)
    b0, b1, wb = _linear_weights(w, wo, align)
    rows = x[..., a0, :] * (1 - wa)[:, None] + x[..., a1, :] * wa[:, None]
    return rows[..., b0] * (1 - wb) + rows[..., b1] * wb


_KERNELS: dict[str, Callable[[_Op], Any]] = {
    "cast": _cast,
    "identity": _unary(lambda x: x),
    "conv": _conv,
    "max_pool": _pool,
    "avg_pool": _pool,
    "linear": _linear,
    "matmul": _matmul,
    "batch_norm": _batch_norm,
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "real_div": _binary(np.divide),
    "maximum": _binary(np.maximum),
    "minimum": _binary(np.minimum),
    "relu": _unary(lambda x: np.maximum(x, 0)),
    "relu6": _unary(lambda x: np.clip(x, 0, 6)),
    "clip": lambda op: np.clip(op.get("x"), op.scalar("alpha"), op.scalar("beta")),
    "leaky_relu": lambda op: _leaky_relu(op.get("x"), op.scalar("alpha", 0.01)),
    "sigmoid": _unary(_sigmoid),
    "sigmoid_hard": lambda op: np.clip(op.scalar("alpha", 0.2) * op.get("x")
                                       + op.scalar("beta", 0.5), 0, 1),
    "silu": _unary(lambda x: x * _sigmoid(x)),
    "tanh": _unary(np.tanh),
    "exp": _unary(np.exp),
    "sqrt": _unary(np.sqrt),
    "softmax": _softmax,
    "reduce_mean": _reduce(np.mean),
    "reduce_sum": _reduce(np.sum),
    "reduce_max": _reduce(np.max),
    "reduce_min": _reduce(np.min),
    "reshape": _reshape,
    "flatten2d": _flatten2d,
    "transpose": lambda op: np.transpose(op.get("x"), op.ints("perm")),
    "squeeze": lambda op: np.squeeze(op.get("x"), axis=op.ints("axes") if op.has("axes") else None),
    "expand_dims": lambda op: np.expand_dims(op.get("x"), op.ints("axes")),
    "pad": _pad,
    "concat": _concat,
    "gelu": _gelu,
    "erf": _unary(_erf),
    "elu": lambda op: (lambda x, a: np.where(x > 0, x, a * (np.exp(np.minimum(x, 0)) - 1)))(
        op.get("x"), op.scalar("alpha", 1.0)),
    "softplus": _unary(lambda x: np.logaddexp(0, x)),
    "linear_activation": lambda op: op.scalar("alpha") * op.get("x") + op.scalar("beta", 0.0),
    "threshold": lambda op: np.maximum(op.get("x"), op.scalar("alpha")),
    "thresholded_relu": _thresholded_relu,
    "layer_norm": _layer_norm,
    "split": _split,
    "slice_by_index": _slice_by_index,
    "slice_by_size": _slice_by_size,
    "tile": lambda op: np.tile(op.get("x"), op.ints("reps")),
    "upsample_nearest_neighbor": _upsample_nearest,
    "upsample_bilinear": _upsample_bilinear,
    "greater": _binary(np.greater),
    "greater_equal": _binary(np.greater_equal),
    "less": _binary(np.less),
    "less_equal": _binary(np.less_equal),
    "equal": _binary(np.equal),
    "not_equal": _binary(np.not_equal),
    "select": lambda op: np.where(op.get("cond"), op.get("a"), op.get("b")),
}

#: Every MIL op type the interpreter evaluates (``const`` is read, not run).
SUPPORTED_OPS: frozenset[str] = frozenset(_KERNELS) | {"const"}


# --------------------------------------------------------------------------- program


@dataclass
class _Output:
    name: str
    dtype: Any
    shape: tuple[int, ...] | None


class MLProgram:
    """A loaded ML program: parse once with :func:`load_mlpackage`, then :meth:`run` many."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        spec, root = _read_spec(self.path)
        where = f"CoreML package {str(self.path)!r}"
        if spec.WhichOneof("Type") is None:
            raise ParityError(f"{where}: the model spec holds no model; re-export it")
        if spec.WhichOneof("Type") != "mlProgram":
            raise UnsupportedOpError(f"{where} holds a {spec.WhichOneof('Type')!r} model; the "
                                     "reference interpreter covers ML programs only")
        self.metadata = dict(spec.description.metadata.userDefined)
        self._weights = _Weights(root, self.path, self.metadata.get(_WEIGHTS_HASH_KEY))
        fn = spec.mlProgram.functions.get("main")
        if fn is None:
            raise ParityError(f"{where} has no 'main' function; re-export it")
        if fn.opset not in fn.block_specializations:
            raise ParityError(f"{where}: main has no block for its opset {fn.opset!r}")
        self.opset = fn.opset
        block = fn.block_specializations[fn.opset]
        if len(fn.inputs) != 1:
            raise UnsupportedOpError(f"{where} has {len(fn.inputs)} inputs; the reference "
                                     "interpreter covers single-input programs")
        self.input_name = fn.inputs[0].name
        self.input_dtype, self.input_shape = _tensor_type(fn.inputs[0].type, where)
        if self.input_shape is None:
            raise UnsupportedOpError(f"{where}: input {self.input_name!r} has a flexible shape; "
                                     "the reference interpreter covers fixed shapes")
        self.output_names = list(block.outputs)
        self.op_types = [op.type for op in block.operations]
        unsupported = sorted({t for t in self.op_types if t not in SUPPORTED_OPS})
        if unsupported:
            raise UnsupportedOpError(
                f"{where} uses op(s) {unsupported} not covered by the reference interpreter "
                f"(it covers {sorted(SUPPORTED_OPS)}); the artifact is not checked")
        for op in block.operations:
            if len(op.blocks):
                raise UnsupportedOpError(f"{where}: op {op.type} has nested blocks")
        self._ops = list(block.operations)
        self._outputs = [[_Output(o.name, *_tensor_type(o.type, f"{where} op {op.type}"))
                          for o in op.outputs] for op in self._ops]
        # constants are decoded once (this also reads and checks the weight file)
        self._consts: dict[str, Any] = {}
        for op, outs in zip(self._ops, self._outputs, strict=True):
            if op.type == "const":
                if "val" not in op.attributes or len(outs) != 1:
                    raise ParityError(f"{where}: const {outs[0].name if outs else '?'!r} has no "
                                      "value; the package is malformed")
                # fp16 values are exact in float32: convert once, not on every use
                self._consts[outs[0].name] = _compute(_decode(
                    op.attributes["val"], self._weights, f"{where} const {outs[0].name!r}"))

    def run(self, x: np.ndarray) -> np.ndarray:
        """Evaluate the program on ``x`` (the declared input shape, or a batch of N samples
        when the declared batch is 1); returns the first output, float32, batch first."""
        x = np.asarray(x)
        shape = self.input_shape
        if x.shape == shape:
            batches = [x]
        elif shape and shape[0] == 1 and x.ndim == len(shape) and x.shape[1:] == shape[1:]:
            batches = [x[i:i + 1] for i in range(x.shape[0])]
        else:
            raise DataError(f"input shape {list(x.shape)} does not fit the program's input "
                            f"{self.input_name!r} {list(shape)}; pass (N, "
                            f"{', '.join(map(str, shape[1:]))})")
        if not batches:
            raise DataError(f"input has no samples (shape {list(x.shape)}); pass at least one")
        with _one_blas_thread():
            return np.concatenate([self._run_one(b) for b in batches])

    def _run_one(self, x: np.ndarray) -> np.ndarray:
        env: dict[str, Any] = {self.input_name: x.astype(self.input_dtype)}
        env.update(self._consts)
        for op_proto, outs in zip(self._ops, self._outputs, strict=True):
            if op_proto.type == "const":
                continue
            op = _Op(op_proto, env, self._weights)
            try:
                result = _KERNELS[op.type](op)
            except EdgepruneError:
                raise
            except (ValueError, IndexError, KeyError, TypeError) as e:
                raise ParityError(f"CoreML package {str(self.path)!r}: op {op.type} "
                                  f"{op.name!r} could not be evaluated ({type(e).__name__}: "
                                  f"{' '.join(str(e).split())}); the package is malformed") from e
            results = result if isinstance(result, tuple) else (result,)
            if len(results) != len(outs):
                raise ParityError(f"op {op.type} {op.name!r} declares {len(outs)} outputs, "
                                  f"computed {len(results)}")
            for out, val in zip(outs, results, strict=True):
                val = np.asarray(val).astype(out.dtype, copy=False)  # fp16 rounding happens here
                if out.shape is not None and val.shape != out.shape:
                    raise ParityError(
                        f"CoreML package {str(self.path)!r}: op {op.type} {op.name!r} computed "
                        f"shape {list(val.shape)}, the program declares {list(out.shape)}; the "
                        "package is malformed")
                env[out.name] = val
        result = env[self.output_names[0]]
        return np.asarray(result, dtype=np.float32)


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """Small matrix products: numpy's OpenBLAS threads contend with torch's OpenMP pool once
    torch is imported (measured 50x slower here), so run BLAS on one thread. threadpoolctl
    comes with scikit-learn, an edgeprune dependency; without it only speed suffers."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def load_mlpackage(path: str | os.PathLike) -> MLProgram:
    """Parse a saved ``.mlpackage`` and read its weights once (see :class:`MLProgram`)."""
    return MLProgram(path)


def run_mlpackage(path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """Evaluate the ML program saved at ``path`` on ``x`` (N, C, H, W) with numpy and return
    its first output (float32, batch first). Raises :class:`UnsupportedOpError` if the program
    uses an op the interpreter does not cover, :class:`ParityError` if the package is corrupt
    or malformed."""
    return MLProgram(path).run(x)
