"""PyTorch -> CoreML ML program (``.mlpackage``) through coremltools (the ``coreml`` extra).

The package takes one float32 tensor ``input`` of shape (1, C, H, W), already normalised, and
returns the raw ``logits``. The normalisation, layout and class names are written into the
package's user-defined metadata (see :data:`METADATA_KEYS`), where an app reads them with
``model.modelDescription.metadata[.creatorDefinedKey]``.

Class labels are *not* attached with coremltools' ``ClassifierConfig``: in an ML program it
replaces the ``logits`` tensor by a ``classLabel`` string and a label -> score dictionary (of
logits, named "probs"), so the raw logits would no longer be an output. The names are in the
metadata and in the output's description instead.

The SHA-256 of ``weights/weight.bin`` is recorded in the metadata (``weights_sha256``) so that
:func:`edgeprune.runtimes.coreml_ref.run_mlpackage` can refuse a corrupted weight file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from edgeprune.convert._common import prepare
from edgeprune.errors import ConfigError, ExportError, MissingDependencyError
from edgeprune.types import InputSpec

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PRECISIONS = ("fp16", "fp32")
SUFFIX = ".mlpackage"
# user-defined metadata written into every package (values are strings; lists are JSON)
METADATA_KEYS = ("input_name", "input_shape", "input_dtype", "layout", "mean", "std",
                 "normalisation", "class_names", "output_name", "output", "precision",
                 "weights_sha256", "edgeprune_version")
WEIGHTS_FILE = "weights/weight.bin"

_QUIET_LOCK = threading.Lock()


def to_coreml(model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor, *,
              precision: str = "fp16", input_spec: InputSpec | None = None) -> Path:
    """Export an ML program ``.mlpackage`` (iOS 15+) computing in ``precision`` ("fp16" or
    "fp32"); its input ``input`` is NCHW float32, already normalised, its output ``logits``.

    Written atomically: the package is built in a temporary folder beside ``path`` and renamed
    into place (an existing package there is replaced only after success). A failed conversion
    leaves nothing at ``path`` (or the old package, untouched) and raises :class:`ExportError`.
    """
    path = Path(path)
    if path.suffix != SUFFIX:
        raise ConfigError(f"CoreML path {str(path)!r} must end in {SUFFIX}; e.g. model{SUFFIX}")
    if precision not in PRECISIONS:
        raise ConfigError(f"CoreML precision {precision!r} is invalid; use one of {PRECISIONS}")
    if input_spec is not None and not isinstance(input_spec, InputSpec):
        raise ConfigError(f"input_spec must be an edgeprune.types.InputSpec, got "
                          f"{type(input_spec).__name__}")
    try:
        import coremltools as ct
    except ImportError as e:
        raise MissingDependencyError(
            "coremltools is not installed; pip install 'edgeprune[coreml]'") from e

    m, x = prepare(model, example_input)
    name = type(model).__name__
    if x.shape[0] != 1:
        raise ExportError(f"example_input batch must be 1 for CoreML, got shape {tuple(x.shape)}; "
                          "pass one sample, e.g. x[:1]")
    if input_spec is not None and tuple(x.shape[1:]) != input_spec.shape:
        raise ConfigError(f"example_input shape {tuple(x.shape[1:])} (C, H, W) does not match "
                          f"input_spec.shape {input_spec.shape}; pass a matching example_input")
    try:
        with torch.no_grad(), _expected_warnings():
            out = m(x)
            traced = torch.jit.trace(m, x)
    except Exception as e:  # forward/trace failures come in many types: all mean "cannot trace"
        raise ExportError(f"torch.jit.trace failed for {name}: {_one_line(e)}") from e
    if not isinstance(out, torch.Tensor):
        raise ExportError(f"{name} returns {type(out).__name__}; CoreML export needs a model "
                          "returning one logits tensor")
    if input_spec is not None and input_spec.class_names and (
            out.ndim != 2 or out.shape[1] != len(input_spec.class_names)):
        raise ConfigError(f"input_spec has {len(input_spec.class_names)} class names but {name} "
                          f"outputs shape {tuple(out.shape)}; fix class_names or the model head")

    compute = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
    with _atomic_dir(path) as tmp:
        try:
            with _quiet_coremltools(), _expected_warnings():
                mlmodel = ct.convert(
                    traced,
                    inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(x.shape))],
                    outputs=[ct.TensorType(name=OUTPUT_NAME)],
                    convert_to="mlprogram",
                    minimum_deployment_target=ct.target.iOS15,
                    compute_precision=compute,
                )
                _describe(mlmodel, name, x, out, precision, input_spec)
                mlmodel.save(str(tmp))
            _record_weights_hash(tmp)
        except Exception as e:  # coremltools raises many types; all mean "could not convert"
            raise ExportError(f"coremltools conversion failed for {name}: {_one_line(e)}") from e
    return path


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _describe(mlmodel, name: str, x: torch.Tensor, out: torch.Tensor, precision: str,
              spec: InputSpec | None) -> None:
    """Descriptions and user-defined metadata an app developer reads in Xcode or at runtime."""
    from edgeprune._version import __version__

    c, h, w = (int(s) for s in x.shape[1:])
    meta = {
        "input_name": INPUT_NAME,
        "input_shape": json.dumps([1, c, h, w]),
        "input_dtype": "float32",
        "layout": "NCHW",
        "output_name": OUTPUT_NAME,
        "output": f"raw logits, shape {list(out.shape)}; softmax gives class probabilities",
        "precision": precision,
        "edgeprune_version": __version__,
    }
    if spec is not None:
        meta["mean"] = json.dumps(list(spec.mean))
        meta["std"] = json.dumps(list(spec.std))
        meta["class_names"] = json.dumps(list(spec.class_names))
        meta["normalisation"] = ("input = (pixel / 255 - mean[c]) / std[c] per channel c, "
                                 "pixel in [0, 255], RGB channel order as in training")
        norm = f"normalised as (pixel/255 - mean) / std with mean {list(spec.mean)}, std {list(spec.std)}"
    else:
        meta["normalisation"] = "unknown: exported without an input_spec"
        norm = "normalised as in training (no input_spec given at export)"
    labels = ""
    if spec is not None and spec.class_names:
        labels = f" in the order {', '.join(spec.class_names)}"
    mlmodel.author = f"edgeprune {__version__}"
    mlmodel.short_description = (
        f"{name} image classifier ({precision} ML program). Input {INPUT_NAME!r}: float32 "
        f"[1, {c}, {h}, {w}] NCHW, {norm}. Output {OUTPUT_NAME!r}: raw logits{labels}.")
    mlmodel.input_description[INPUT_NAME] = f"float32 [1, {c}, {h}, {w}] NCHW image, {norm}"
    mlmodel.output_description[OUTPUT_NAME] = f"raw logits {list(out.shape)}{labels}"
    for k, v in meta.items():
        mlmodel.user_defined_metadata[k] = v


def _record_weights_hash(package: Path) -> None:
    """Write the SHA-256 of the saved weight file into the package's metadata (the weight file
    does not depend on the metadata, so the hash stays valid)."""
    from coremltools.proto import Model_pb2

    spec_path = _spec_path(package)
    weights = spec_path.parent / WEIGHTS_FILE
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    if weights.is_file():
        spec.description.metadata.userDefined["weights_sha256"] = _sha256(weights)
    spec_path.write_bytes(spec.SerializeToString())


def _spec_path(package: Path) -> Path:
    manifest = json.loads((package / "Manifest.json").read_text())
    root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    return package / "Data" / root


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def _atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary ``*.mlpackage`` path in a fresh folder beside ``path``; on success it
    is renamed to ``path`` (an existing one is moved aside first and deleted only once the new
    one is in place); on failure the temporary folder is removed and ``path`` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp = work / path.name
        yield tmp
        if not tmp.is_dir():
            raise ExportError(f"coremltools wrote no package at {str(tmp)!r}")
        old = None
        if path.exists() or path.is_symlink():
            old = work / f"{path.name}.old"
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old is not None:
                os.replace(old, path)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _expected_warnings() -> Iterator[None]:
    """Hide the warnings that the chosen path always raises (torch 2.13 deprecates
    ``torch.jit.trace``, which coremltools' stable torch frontend needs; tracer warnings about
    constants) and nothing else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated",
                                category=DeprecationWarning)
        yield


@contextmanager
def _quiet_coremltools() -> Iterator[None]:
    """coremltools draws tqdm progress bars on stderr while converting; library code must not
    print, so swap in disabled bars for the conversion. Log records, warnings and exceptions
    pass through untouched."""
    import tqdm
    from coremltools.converters.mil.frontend.torch import ops as torch_ops
    from coremltools.converters.mil.mil.passes import pass_pipeline

    quiet = functools.partial(tqdm.tqdm, disable=True)
    targets = [(torch_ops, "_tqdm"), (pass_pipeline, "tqdm")]
    with _QUIET_LOCK:
        saved = [(mod, attr, getattr(mod, attr)) for mod, attr in targets if hasattr(mod, attr)]
        for mod, attr, _ in saved:
            setattr(mod, attr, quiet)
        try:
            yield
        finally:
            for mod, attr, orig in saved:
                setattr(mod, attr, orig)
