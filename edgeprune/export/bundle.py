"""The export bundle for app developers: every artifact, the PyTorch source checkpoint,
``model.json`` (how to feed the model and read its output, quantisation parameters, parity
and measured host latency per artifact) and a README with Android / iOS loading code.

``edgeprune.export(model, out_dir, formats=..., example_input=..., calibration=...)``.
The bundle is built in a temporary directory and moved into place when complete: a failed
export raises and leaves ``out_dir`` as it was, and a re-export never mixes two models.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune._io import atomic_path, write_json
from edgeprune.errors import ConfigError, ExportError
from edgeprune.export.tflite import check_int8_logits
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


@dataclass(frozen=True)
class Artifact:
    format: str
    file: str  # relative to the bundle directory
    runtime: str
    size_bytes: int
    export_s: float
    sha256: str
    io: dict[str, Any]  # input/output name, shape, layout, dtype, quantisation
    parity: dict[str, Any]  # export-time host check: max_abs, top1_agreement, images, or why not
    host_latency: dict[str, Any]  # median_ms etc. on this host, 1 thread, or why not measured


@dataclass(frozen=True)
class Bundle:
    path: Path
    artifacts: tuple[Artifact, ...]
    model_json: dict[str, Any]

    def artifact(self, fmt: str) -> Artifact:
        for a in self.artifacts:
            if a.format == fmt:
                return a
        raise ConfigError(f"bundle {str(self.path)!r} has no {fmt!r} artifact; it has "
                          f"{[a.format for a in self.artifacts]}")

    def __str__(self) -> str:
        lines = [f"bundle {self.path}", f"{'format':12} {'file':20} {'KiB':>7} {'export s':>8} "
                 f"{'max|d|':>9} {'agree':>7} {'host ms':>8}"]
        for a in self.artifacts:
            p, lat = a.parity, a.host_latency
            diff = f"{p['max_abs']:.2e}" if "max_abs" in p else "-"
            agree = f"{100 * p['top1_agreement']:.1f}%" if "top1_agreement" in p else "-"
            ms = f"{lat['median_ms']:.3f}" if "median_ms" in lat else "-"
            lines.append(f"{a.format:12} {a.file:20} {a.size_bytes / 1024:7.0f} {a.export_s:8.1f} "
                         f"{diff:>9} {agree:>7} {ms:>8}")
        return "\n".join(lines)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Bundle:
        p = Path(path)
        mj = p / "model.json"
        if not mj.is_file():
            raise ExportError(f"{str(p)!r} is not a complete edgeprune bundle (no model.json); re-run "
                              "edgeprune export")
        try:
            d = json.loads(mj.read_text())
            arts = tuple(Artifact(**a) for a in d["artifacts"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ExportError(f"{str(mj)!r} is malformed: {e}") from e
        return cls(p, arts, d)


def export(model: nn.Module, out_dir: str | os.PathLike, *, formats: Sequence[str] = FORMATS,
           example_input: torch.Tensor | None = None, calibration: Iterable | None = None,
           spec=None, coreml_precision: str = "fp16", calibration_images: int = 500,
           int8_logits: str = "top2", force: bool = False,
           on_progress: Callable[[Progress], None] | None = None) -> Bundle:
    """Export ``model`` to ``formats`` in ``out_dir`` with model.json and a README.

    ``example_input``: NCHW (default: zeros of the spec's input shape). ``calibration``:
    normalised NCHW batches for int8 (the pruner's unlabeled data; required for
    ``tflite-int8``); the first ``calibration_images`` are used, and the first 64 also
    serve the export-time parity check. ``int8_logits``: the int8 output range, ``"top2"``
    (classifiers; default) or ``"full"``, see :func:`edgeprune.export.tflite.to_tflite_int8`.
    ``spec``: a ModelSpec (default: the model's own,
    from ``edgeprune.load``).

    ``out_dir`` must be new or empty; ``force=True`` replaces an existing bundle there. The
    bundle is built in a temporary directory beside ``out_dir`` and moved into place when
    complete, so ``out_dir`` never mixes two models' artifacts and a failed export leaves it
    as it was.
    """
    from edgeprune.checkpoint import spec_of
    from edgeprune.data import input_of

    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"unknown export format(s) {bad}; choose from {list(FORMATS)}")
    out = Path(out_dir)
    _check_out_dir(out, force)
    spec = spec or getattr(model, "edgeprune_spec", None) or spec_of(model)
    if spec is None:
        raise ConfigError("model has no spec (architecture, input); pass spec=ModelSpec(...) or load it "
                          "with edgeprune.load")
    ispec: InputSpec = spec.input
    example = example_input if example_input is not None else torch.zeros(1, *ispec.shape)
    if example.dim() != 4 or tuple(example.shape[1:]) != tuple(ispec.shape):
        raise ConfigError(f"example_input shape {tuple(example.shape)} does not match the spec's input "
                          f"{ispec.shape}; give (1, C, H, W)")
    calib: list[torch.Tensor] = []
    if calibration is not None:
        n = 0
        for b in calibration:
            x = input_of(b)
            calib.append(x)
            n += len(x)
            if n >= calibration_images:
                break
    check_int8_logits(int8_logits, "int8_logits")
    if "tflite-int8" in formats and not calib:
        raise ConfigError("tflite-int8 needs calibration data: pass calibration= (normalised NCHW batches, "
                          "e.g. the pruning data; CLI: --calib-data SPEC)")
    check_x = (torch.cat(calib)[:CHECK_IMAGES] if calib else
               torch.randn(16, *ispec.shape, generator=torch.Generator().manual_seed(0)))
    model = copy.deepcopy(model).eval()  # the caller's model keeps its mode
    with torch.no_grad():
        ref = model(check_x).numpy()

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as build:
        model_json, artifacts = _build(Path(build), model, spec, formats, example, calib, ispec,
                                       check_x, ref, coreml_precision, int8_logits, on_progress)
        _swap_in(Path(build), out)
        return Bundle(out, tuple(artifacts), model_json)


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


def _swap_in(build: Path, out: Path) -> None:
    """Move the finished bundle ``build`` to ``out``, replacing what was there: two renames,
    so ``out`` holds the old bundle or the new one, never a mix."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(build, out)
        shutil.rmtree(old)
    else:
        os.replace(build, out)
    build.mkdir()  # the TemporaryDirectory context removes it again


def _build(out: Path, model: nn.Module, spec, formats: tuple[str, ...], example: torch.Tensor,
           calib: list[torch.Tensor], ispec: InputSpec, check_x: torch.Tensor, ref: np.ndarray,
           coreml_precision: str, int8_logits: str,
           on_progress: Callable[[Progress], None] | None) -> tuple[dict[str, Any], list[Artifact]]:
    """Write every artifact, model.json and the README into the empty directory ``out``."""
    from edgeprune import __version__
    from edgeprune.checkpoint import save

    src = save(model, out / "model.safetensors", spec=spec)
    total = len(formats)
    artifacts = []
    for i, fmt in enumerate(formats):
        t0 = time.perf_counter()
        path = out / FILES[fmt]
        _export_one(fmt, model, path, example, calib, ispec, coreml_precision, int8_logits)
        export_s = time.perf_counter() - t0
        io, parity, lat = _check_artifact(fmt, path, check_x, ref)
        if fmt == "tflite-int8":
            io["output"]["range"] = int8_logits
            io["output"]["range_note"] = INT8_RANGE_NOTE[int8_logits]
        artifacts.append(Artifact(fmt, FILES[fmt], RUNTIME[fmt], _size(path), round(export_s, 2),
                                  _sha256(path), io, parity, lat))
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
        "artifacts": [a.__dict__ for a in artifacts],
    }
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(_readme(model_json, formats))
    write_json(out / "model.json", model_json)
    return model_json, artifacts


def _export_one(fmt: str, model: nn.Module, path: Path, example: torch.Tensor,
                calib: list[torch.Tensor], ispec: InputSpec, coreml_precision: str,
                int8_logits: str) -> None:
    from edgeprune.export.onnx import to_onnx
    from edgeprune.export.tflite import to_tflite, to_tflite_int8

    if fmt == "tflite":
        to_tflite(model, path, example)
    elif fmt == "tflite-int8":
        to_tflite_int8(model, path, example, calib, min_images=min(100, sum(len(c) for c in calib)),
                       logits=int8_logits)
    elif fmt == "onnx":
        to_onnx(model, path, example)
    else:
        from edgeprune.export.coreml import to_coreml

        to_coreml(model, path, example, precision=coreml_precision, input_spec=ispec)


def _check_artifact(fmt: str, path: Path, x: torch.Tensor, ref: np.ndarray
                    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The artifact's I/O description, a parity check on this host and its host latency."""
    from edgeprune.runtimes import open_session, time_session

    if fmt == "coreml":
        io = {"input": {"name": "input", "shape": [1, *x.shape[1:]], "layout": "NCHW", "dtype": "float32"},
              "output": {"name": "logits", "dtype": "float32"}}
        return io, _coreml_parity(path, x, ref), {
            "status": "not measured", "reason": "CoreML runs only on Apple devices/macOS"}
    sess = open_session(path, threads=1)
    got = sess.run_batched(x.numpy())
    diff = np.abs(got - ref)
    parity = {"runtime": sess.runtime, "runtime_version": sess.runtime_version, "images": int(len(x)),
              "max_abs": float(diff.max()), "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}
    lat = time_session(sess, x[:1].numpy(), warmup=10, runs=50)
    n, c, h, w = sess.input_shape
    layout = "NHWC" if sess.runtime == "litert" else "NCHW"
    in_shape = [n, h, w, c] if layout == "NHWC" else [n, c, h, w]
    io = {"input": {"shape": in_shape, "layout": layout, "dtype": str(getattr(sess, "input_dtype", "float32"))},
          "output": {"dtype": str(getattr(sess, "output_dtype", "float32"))}}
    io["input"]["name"], io["output"]["name"] = sess.input_name, sess.output_name
    if fmt == "tflite-int8":
        (s_in, z_in), (s_out, z_out) = sess.input_quantization, sess.output_quantization
        io["input"]["quantization"] = {"scale": float(s_in), "zero_point": int(z_in)}
        io["output"]["quantization"] = {"scale": float(s_out), "zero_point": int(z_out)}
        io["quantization_note"] = "real = scale * (q - zero_point); int8 weights per channel"
    return io, parity, {"median_ms": lat.median_ms, "p10_ms": lat.p10_ms, "p90_ms": lat.p90_ms,
                        "runs": lat.runs, "threads": 1, "runtime": sess.runtime,
                        "runtime_version": sess.runtime_version,
                        "note": "this export host, not the target device"}


def _coreml_parity(path: Path, x: torch.Tensor, ref: np.ndarray) -> dict[str, Any]:
    from edgeprune.validate.coreml_ref import UnsupportedOpError, run_mlpackage

    try:
        got = run_mlpackage(path, x.numpy())
    except UnsupportedOpError as e:
        return {"status": "not checked", "reason": str(e)}
    return {"runtime": "numpy reference interpreter", "images": int(len(x)),
            "max_abs": float(np.abs(got - ref).max()),
            "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}


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


def _readme(mj: dict[str, Any], formats: Sequence[str]) -> str:
    inp = mj["input"]
    _, c, h, w = inp["shape_nchw"]
    mean = ", ".join(f"{v:.4f}f" for v in inp["mean"])
    std = ", ".join(f"{v:.4f}f" for v in inp["std"])
    classes = mj["output"]["class_names"]
    k = mj["output"]["shape"][0] if mj["output"]["shape"] else len(classes)
    lines = [f"# {mj['architecture']} — edgeprune bundle", "",
             f"Input: {c}x{h}x{w} RGB image, pixels scaled to [0, 1], then normalised per channel with "
             f"mean [{', '.join(f'{v:.4f}' for v in inp['mean'])}] and std "
             f"[{', '.join(f'{v:.4f}' for v in inp['std'])}]. Output: {k} logits"
             + (f" for classes {', '.join(classes)}." if classes else "."), "",
             "| file | format | runtime | input | size KiB | host parity max abs | host median ms |",
             "|---|---|---|---|---:|---:|---:|"]
    for a in mj["artifacts"]:
        i = a["io"]["input"]
        diff = a["parity"].get("max_abs")
        ms = a["host_latency"].get("median_ms")
        diff_s = f"{diff:.2e}" if diff is not None else a["parity"].get("status", "-")
        ms_s = f"{ms:.3f}" if ms is not None else "not measured"
        lines.append(f"| {a['file']} | {a['format']} | {a['runtime']} | {i.get('layout')} {i.get('dtype')} "
                     f"{i.get('shape')} | {a['size_bytes'] / 1024:.0f} | "
                     f"{diff_s} | {ms_s} |")
    lines += ["", "Latency above is on the machine that exported the bundle, not on your device; measure "
              "on the device (edgeprune targets) before you promise a frame rate.", ""]
    if any(f.startswith("tflite") for f in formats):
        tfl = "model_int8.tflite" if "tflite-int8" in formats and "tflite" not in formats else "model.tflite"
        lines += ["## Android (Kotlin, LiteRT Interpreter)", "",
                  "```kotlin",
                  "// build.gradle: implementation(\"com.google.ai.edge.litert:litert:1.+\")",
                  f"val interpreter = Interpreter(FileUtil.loadMappedFile(context, \"{tfl}\"),",
                  "    Interpreter.Options().apply { setNumThreads(4) })",
                  f"val mean = floatArrayOf({mean}); val std = floatArrayOf({std})",
                  f"val input = ByteBuffer.allocateDirect(4 * {h} * {w} * {c}).order(ByteOrder.nativeOrder())",
                  f"val bmp = Bitmap.createScaledBitmap(bitmap, {w}, {h}, true)",
                  f"for (y in 0 until {h}) for (x in 0 until {w}) {{  // NHWC, RGB",
                  "    val p = bmp.getPixel(x, y)",
                  "    val rgb = floatArrayOf(((p shr 16) and 255) / 255f, ((p shr 8) and 255) / 255f, (p and 255) / 255f)",
                  f"    for (ch in 0 until {c}) input.putFloat((rgb[ch] - mean[ch]) / std[ch])",
                  "}",
                  f"val logits = Array(1) {{ FloatArray({k}) }}",
                  "interpreter.run(input.rewind(), logits)",
                  "```", ""]
        if "tflite-int8" in formats:
            q = next(a for a in mj["artifacts"] if a["format"] == "tflite-int8")["io"]
            qi, qo = q["input"]["quantization"], q["output"]["quantization"]
            lines += [f"`model_int8.tflite` takes int8 input: q = round(x / {qi['scale']:.6g}) + "
                      f"({qi['zero_point']}), clamped to [-128, 127], after the normalisation above; its "
                      f"int8 output is logits = {qo['scale']:.6g} * (q - ({qo['zero_point']})); "
                      f"{qo.get('range_note', 'its range covers the calibration logits')}.", ""]
    if "coreml" in formats:
        lines += ["## iOS (Swift, CoreML)", "",
                  "```swift",
                  "let model = try MLModel(contentsOf: Bundle.main.url(forResource: \"model\", withExtension: \"mlmodelc\")!)",
                  f"let input = try MLMultiArray(shape: [1, {c}, {h}, {w}], dataType: .float32)  // NCHW",
                  f"let mean: [Float] = [{mean.replace('f', '')}], std: [Float] = [{std.replace('f', '')}]",
                  "// for each channel ch, row y, column x: input[[0, ch, y, x]] = (pixel[ch] / 255 - mean[ch]) / std[ch]",
                  "let out = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: [\"input\": input]))",
                  "let logits = out.featureValue(for: \"logits\")!.multiArrayValue!",
                  "```", "",
                  "Xcode compiles `model.mlpackage` into `model.mlmodelc` when you add it to the app target.", ""]
    if "onnx" in formats:
        lines += ["## ONNX Runtime", "", "`model.onnx` takes NCHW float32 input named as in model.json "
                  "(opset 18).", ""]
    return "\n".join(lines)
