"""``edgeprune.export``'s work: every artifact, the PyTorch source checkpoint, ``model.json``
(how to feed the model and read its output, quantisation parameters, parity and measured
host latency per artifact) and a README with Android / iOS loading code.

The bundle is built in a temporary directory and moved into place when complete: a failed
export raises and leaves ``out_dir`` as it was, and a re-export never mixes two models.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune._config import config_from_dict, config_to_dict
from edgeprune._io import atomic_path, write_json
from edgeprune.bundle.artifacts import (
    Artifact,
    ArtifactIO,
    Bundle,
    HostLatency,
    Parity,
    Quantization,
    TensorIO,
)
from edgeprune.bundle.readme import bundle_readme
from edgeprune.convert.ptq import check_ptq_steps
from edgeprune.convert.tflite import INT8_LOGITS
from edgeprune.errors import ConfigError, ExportError
from edgeprune.models.checkpoint import ModelSpec
from edgeprune.types import InputSpec, Progress

FORMATS = ("tflite", "tflite-int8", "coreml", "onnx")
FILES = {"tflite": "model.tflite", "tflite-int8": "model_int8.tflite", "coreml": "model.mlpackage",
         "onnx": "model.onnx"}
INT8_RANGE_NOTE = {
    "top2": ("the int8 range runs from just below the smallest second-largest logit to the largest "
             "logit seen in calibration; lower logits saturate at its floor (argmax and the top "
             "probabilities are kept, low logits are not)"),
    "full": "the int8 range spans every logit value seen in calibration",
}
RUNTIME = {"tflite": "litert", "tflite-int8": "litert", "coreml": "coreml", "onnx": "onnxruntime"}
BUNDLE_SCHEMA_VERSION = 1
CHECK_IMAGES = 64  # images the export-time parity check runs on each artifact
COREML_PRECISIONS = ("fp16", "fp32")


@dataclass(frozen=True)
class ExportConfig:
    """What :func:`edgeprune.export` writes. ``formats``: any of :data:`FORMATS`.
    ``calibration_images``: how many of ``data``'s images calibrate int8 (the first 64 also
    serve the export-time parity check). ``coreml_precision``: "fp16" or "fp32".
    ``int8_logits``: the int8 output range, "top2" (classifiers) or "full"
    (:func:`edgeprune.convert.to_tflite_int8`). ``int8_ptq``: label-free steps applied before
    int8 quantisation, any of "cle", "adaround", "bias_correction"
    (:mod:`edgeprune.convert.ptq`); the default, cross-layer equalization, needs a
    torch.fx-traceable model (``()`` for one that is not)."""

    formats: tuple[str, ...] = FORMATS
    calibration_images: int = 500
    coreml_precision: str = "fp16"
    int8_logits: str = "top2"
    int8_ptq: tuple[str, ...] = ("cle",)  # chosen on the val split: docs/export.md

    def __post_init__(self) -> None:
        formats = (self.formats,) if isinstance(self.formats, str) else tuple(self.formats)
        bad = [f for f in formats if f not in FORMATS]
        if bad or not formats:
            raise ConfigError(f"unknown export format(s) {bad}; choose from {list(FORMATS)}")
        object.__setattr__(self, "formats", formats)
        n = self.calibration_images
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"ExportConfig.calibration_images={n!r} is invalid; need an integer >= 1")
        if self.coreml_precision not in COREML_PRECISIONS:
            raise ConfigError(f"ExportConfig.coreml_precision={self.coreml_precision!r} is invalid; "
                              f"choose from {list(COREML_PRECISIONS)}")
        if self.int8_logits not in INT8_LOGITS:
            raise ConfigError(f"ExportConfig.int8_logits={self.int8_logits!r} is not an int8 output "
                              f"range; choose from {list(INT8_LOGITS)}")
        try:
            object.__setattr__(self, "int8_ptq", check_ptq_steps(self.int8_ptq, "ExportConfig.int8_ptq"))
        except ExportError as e:
            raise ConfigError(str(e)) from None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExportConfig:
        return config_from_dict(cls, {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        d = config_to_dict(self)
        d["formats"] = list(d["formats"])
        d["int8_ptq"] = list(d["int8_ptq"])
        return d

    def replace(self, **changes: Any) -> ExportConfig:
        return dataclasses.replace(self, **changes)


def build(model: nn.Module, out_dir: str | os.PathLike, *, data: Iterable | None = None,
          input_shape: tuple[int, int, int] | None = None, spec: ModelSpec | None = None,
          config: ExportConfig = ExportConfig(), force: bool = False,
          on_progress: Callable[[Progress], None] | None = None) -> Bundle:
    """Export ``model`` (never modified) to ``config.formats`` in ``out_dir``, with
    model.json and a README; see :func:`edgeprune.export`."""
    from edgeprune.data import input_of

    if not isinstance(config, ExportConfig):
        raise ConfigError(f"config must be an ExportConfig, got {type(config).__name__}")
    out = Path(out_dir)
    _check_out_dir(out, force)
    formats = config.formats
    calib: list[torch.Tensor] = []
    if data is not None:
        n = 0
        for b in data:
            x = input_of(b)
            calib.append(x)
            n += len(x)
            if n >= config.calibration_images:
                break
    if "tflite-int8" in formats and not calib:
        raise ConfigError("tflite-int8 needs calibration data: pass data= (normalised NCHW batches, "
                          "e.g. the pruning data; CLI: --calib-data SPEC)")
    spec = _spec_for(model, spec, input_shape or (tuple(calib[0].shape[1:]) if calib else None))
    ispec: InputSpec = spec.input
    example = torch.zeros(1, *ispec.shape)
    if calib and tuple(calib[0].shape[1:]) != ispec.shape:
        raise ConfigError(f"data has inputs of shape {tuple(calib[0].shape[1:])} but the model's spec "
                          f"says {ispec.shape}; give data the model takes")
    check_x = (torch.cat(calib)[:CHECK_IMAGES] if calib else
               torch.randn(16, *ispec.shape, generator=torch.Generator().manual_seed(0)))
    model = copy.deepcopy(model).eval()  # the caller's model keeps its mode
    with torch.no_grad():
        ref = model(check_x).numpy()

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        bundle = _build(Path(tmp), model, spec, config, example, calib, check_x, ref, on_progress)
        _swap_in(Path(tmp), out)
    return dataclasses.replace(bundle, path=out)


def _spec_for(model: nn.Module, spec: ModelSpec | None,
              input_shape: tuple[int, ...] | None) -> ModelSpec:
    """The spec the bundle's source checkpoint records: given, the model's own (from
    ``edgeprune.load`` or the zoo), or for a plain module its class as ``module:Class`` (built
    with no arguments when the bundle is loaded) and the input shape of the data."""
    from edgeprune.models.checkpoint import spec_of

    spec = spec or spec_of(model)
    if spec is not None:
        if input_shape is not None and tuple(input_shape) != spec.input.shape:
            raise ConfigError(f"input_shape {tuple(input_shape)} does not match the model's spec "
                              f"{spec.input.shape}")
        return spec
    if input_shape is None:
        raise ConfigError(f"{type(model).__name__} has no input spec: pass data= (its batches give "
                          "the input shape) or input_shape=(C, H, W)")
    c = int(input_shape[0])
    cls = type(model)
    return ModelSpec(f"{cls.__module__}:{cls.__qualname__}", {},
                     InputSpec(shape=tuple(input_shape), mean=(0.0,) * c, std=(1.0,) * c))


def _check_out_dir(out: Path, force: bool) -> None:
    """Refuse, before any work, an ``out_dir`` that is a file, or a non-empty directory unless
    ``force`` and it holds an edgeprune bundle (never replace a directory edgeprune did not
    write)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export directory {str(out)!r} is an existing file; give a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise ConfigError(f"export directory {str(out)!r} is not empty; choose a new directory, or "
                          "replace the bundle in it with force=True (CLI: --force)")
    if not (out / "model.json").is_file():
        raise ConfigError(f"export directory {str(out)!r} is not empty and holds no edgeprune bundle "
                          "(no model.json); edgeprune replaces only its own bundles: choose a new "
                          "directory")


def _swap_in(done: Path, out: Path) -> None:
    """Move the finished bundle ``done`` to ``out``, replacing what was there: two renames,
    so ``out`` holds the old bundle or the new one, never a mix."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(done, out)
        shutil.rmtree(old)
    else:
        os.replace(done, out)
    done.mkdir()  # the TemporaryDirectory context removes it again


def _build(out: Path, model: nn.Module, spec: ModelSpec, config: ExportConfig,
           example: torch.Tensor, calib: list[torch.Tensor], check_x: torch.Tensor, ref: np.ndarray,
           on_progress: Callable[[Progress], None] | None) -> Bundle:
    """Write every artifact, model.json and the README into the empty directory ``out``."""
    from edgeprune._version import __version__
    from edgeprune.models.checkpoint import save

    ispec = spec.input
    src = save(model, out / "model.safetensors", spec=spec)
    total = len(config.formats)
    artifacts = []
    for i, fmt in enumerate(config.formats):
        t0 = time.perf_counter()
        path = out / FILES[fmt]
        _export_one(fmt, model, path, example, calib, ispec, config)
        export_s = time.perf_counter() - t0
        io, parity, lat = _check_artifact(fmt, path, check_x, ref)
        if fmt == "tflite-int8":
            io = dataclasses.replace(io, output=dataclasses.replace(
                io.output, range=config.int8_logits, range_note=INT8_RANGE_NOTE[config.int8_logits]))
        artifacts.append(Artifact(fmt, FILES[fmt], RUNTIME[fmt], _size(path), round(export_s, 2),
                                  _sha256(path), io, parity, lat,
                                  config.int8_ptq if fmt == "tflite-int8" else None))
        if on_progress is not None:
            on_progress(Progress("export", i + 1, total, {"format": fmt}))
    model_json = {
        "schema_version": BUNDLE_SCHEMA_VERSION,
        "edgeprune_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "architecture": spec.architecture,
        "source_checkpoint": {"file": src.name, "sha256": _sha256(src),
                              "pruned_from_sha256": spec.metadata.get("pruned_from_sha256")},
        "input": {"shape_nchw": [1, *ispec.shape], "layout_note": "TFLite artifacts take NHWC, ONNX and "
                  "CoreML take NCHW (see each artifact's io)", "dtype": "float32",
                  "normalisation": "x = (pixel / 255 - mean) / std, per channel, RGB",
                  "mean": list(ispec.mean), "std": list(ispec.std)},
        "output": {"meaning": "logits (apply softmax for probabilities)", "shape": list(ref.shape[1:]),
                   "class_names": list(ispec.class_names)},
        "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine()},
        "check_images": int(len(check_x)),
        "check_data": "calibration data" if calib else "random normal inputs (no calibration data given)",
        "artifacts": [a.to_dict() for a in artifacts],
    }
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(bundle_readme(model_json, config.formats))
    write_json(out / "model.json", model_json)
    return Bundle(out, tuple(artifacts), model_json)


def _export_one(fmt: str, model: nn.Module, path: Path, example: torch.Tensor,
                calib: list[torch.Tensor], ispec: InputSpec, config: ExportConfig) -> None:
    from edgeprune.convert import to_onnx, to_tflite, to_tflite_int8

    if fmt == "tflite":
        to_tflite(model, path, example)
    elif fmt == "tflite-int8":
        to_tflite_int8(model, path, example, calib, min_images=min(100, sum(len(c) for c in calib)),
                       logits=config.int8_logits, ptq=config.int8_ptq)
    elif fmt == "onnx":
        to_onnx(model, path, example)
    else:
        from edgeprune.convert.coreml import to_coreml

        to_coreml(model, path, example, precision=config.coreml_precision, input_spec=ispec)


def _check_artifact(fmt: str, path: Path, x: torch.Tensor, ref: np.ndarray
                    ) -> tuple[ArtifactIO, Parity, HostLatency]:
    """The artifact's I/O description, a parity check on this host and its host latency."""
    from edgeprune.profiling.measurement import time_artifacts
    from edgeprune.runtimes import open_session
    from edgeprune.targets import load_target

    if fmt == "coreml":
        io = ArtifactIO(TensorIO("input", (1, *x.shape[1:]), "NCHW", "float32"),
                        TensorIO("logits", dtype="float32"))
        return io, _coreml_parity(path, x, ref), HostLatency(
            status="not measured", reason="CoreML runs only on Apple devices/macOS")
    sess = open_session(path, threads=1)
    got = sess.run_batched(x.numpy())
    diff = np.abs(got - ref)
    parity = Parity(images=int(len(x)), max_abs=float(diff.max()),
                    top1_agreement=float((got.argmax(1) == ref.argmax(1)).mean()),
                    runtime=sess.runtime, runtime_version=sess.runtime_version)
    host = load_target(_HOST_TARGET[fmt])
    lat = time_artifacts([path], host)[0]
    m = host.measure
    n, c, h, w = sess.input_shape
    layout = "NHWC" if sess.runtime == "litert" else "NCHW"
    in_shape = (n, h, w, c) if layout == "NHWC" else (n, c, h, w)
    in_q = out_q = note = None
    if fmt == "tflite-int8":
        (s_in, z_in), (s_out, z_out) = sess.input_quantization, sess.output_quantization
        in_q, out_q = Quantization(float(s_in), int(z_in)), Quantization(float(s_out), int(z_out))
        note = "real = scale * (q - zero_point); int8 weights per channel"
    io = ArtifactIO(
        TensorIO(sess.input_name, in_shape, layout, str(getattr(sess, "input_dtype", "float32")), in_q),
        TensorIO(sess.output_name, dtype=str(getattr(sess, "output_dtype", "float32")), quantization=out_q),
        note)
    return io, parity, HostLatency(
        lat.median_ms, lat.p10_ms, lat.p90_ms, lat.runs, host.threads, sess.runtime,
        sess.runtime_version, "this export host, not the target device",
        protocol=f"{host.name}: {m.passes} passes of {m.warmup} warm-up + {m.runs} timed runs, each "
                 f"pass a fresh session, {m.pass_interval_s:g} s or more apart; the fastest pass's "
                 "median (as edgeprune measure)",
        pass_medians_ms=[round(v, 6) for v in lat.pass_medians_ms])


# the local target whose protocol times each format on the export host
_HOST_TARGET = {"tflite": "host-litert", "tflite-int8": "host-litert-int8", "onnx": "host-onnxruntime"}


def _coreml_parity(path: Path, x: torch.Tensor, ref: np.ndarray) -> Parity:
    from edgeprune.runtimes.coreml_ref import UnsupportedOpError, run_mlpackage

    try:
        got = run_mlpackage(path, x.numpy())
    except UnsupportedOpError as e:
        return Parity(status="not checked", reason=str(e))
    return Parity(images=int(len(x)), max_abs=float(np.abs(got - ref).max()),
                  top1_agreement=float((got.argmax(1) == ref.argmax(1)).mean()),
                  runtime="numpy reference interpreter")


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()
