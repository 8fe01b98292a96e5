"""Checkpoints without pickle: ``edgeprune.save(model, path)`` / ``edgeprune.load(path)``.

One ``.safetensors`` file. The tensors are the model's ``state_dict``; the safetensors header
(plain JSON at the start of the file) carries the edgeprune spec under the ``edgeprune`` key:

    {"format": "edgeprune-checkpoint", "schema_version": 1,
     "architecture": "resnet20" | "package.module:factory", "arch_kwargs": {...},
     "layers": {"layer1.0.conv1": {"kind": "conv2d", "in_channels": 16, "out_channels": 9,
                                   "groups": 1}, ...},
     "input": {"shape": [3, 32, 32], "layout": "NCHW", "mean": [...], "std": [...],
               "class_names": [...]},
     "edgeprune_version": "0.1.0", "metadata": {...}}

``layers`` records every conv / batch-norm / linear's channel widths, and every residual
block that pruning removed (``{"kind": "removed"}``), so a pruned model is rebuilt by creating
the architecture at full width, replacing the removed blocks and resizing those modules. Loading never
unpickles: a ``module:factory`` architecture is imported by name like any installed code.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from edgeprune._io import atomic_path
from edgeprune.errors import CheckpointError, ConfigError, EdgepruneError
from edgeprune.models.registry import ARCH_ATTR, create, names
from edgeprune.models.removed import RemovedBlock
from edgeprune.types import InputSpec

FORMAT = "edgeprune-checkpoint"
SCHEMA_VERSION = 1
SPEC_ATTR = "edgeprune_spec"
_HEADER_KEY = "edgeprune"


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a model: architecture (zoo name or ``module:callable``), its constructor
    keyword arguments, what it expects as input, and free-form metadata (metrics, commands)."""

    architecture: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    input: InputSpec = field(default_factory=InputSpec)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, str) or not self.architecture:
            raise ConfigError(f"architecture {self.architecture!r} must be a zoo name or 'module:callable'")
        if ":" not in self.architecture and self.architecture not in names():
            raise ConfigError(
                f"architecture {self.architecture!r} is neither a zoo model ({', '.join(names())}) "
                "nor an importable 'module:callable' factory"
            )
        try:
            json.dumps(self.arch_kwargs)
            json.dumps(self.metadata)
        except TypeError as e:
            raise ConfigError(f"arch_kwargs and metadata must be JSON-serialisable: {e}") from e

    def build(self) -> nn.Module:
        """A freshly initialised model at the architecture's full width."""
        if ":" not in self.architecture:
            return create(self.architecture, **self.arch_kwargs)
        mod_name, _, fn_name = self.architecture.partition(":")
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as e:
            raise CheckpointError(
                f"architecture factory {self.architecture!r} cannot be imported ({e}); "
                "install the package that defines it"
            ) from e
        model = fn(**self.arch_kwargs)
        if not isinstance(model, nn.Module):
            raise CheckpointError(f"factory {self.architecture!r} returned {type(model).__name__}, not nn.Module")
        return model

    def with_metadata(self, **items: Any) -> ModelSpec:
        return ModelSpec(self.architecture, dict(self.arch_kwargs), self.input,
                         {**self.metadata, **items})


def spec_of(model: nn.Module) -> ModelSpec | None:
    """The spec a model carries: from :func:`load`, or the zoo's record of how it was made."""
    spec = getattr(model, SPEC_ATTR, None)
    if isinstance(spec, ModelSpec):
        return spec
    arch = getattr(model, ARCH_ATTR, None)
    if isinstance(arch, dict) and "name" in arch:
        kwargs = dict(arch.get("kwargs", {}))
        c = int(kwargs.get("in_channels", 3))
        return ModelSpec(arch["name"], kwargs, InputSpec(shape=(c, 32, 32), mean=(0.0,) * c, std=(1.0,) * c))
    return None


def layer_shapes(model: nn.Module) -> dict[str, dict[str, int | str]]:
    """Channel widths of every conv, batch-norm and linear layer, and every residual block
    removed by pruning, keyed by module path."""
    out: dict[str, dict[str, int | str]] = {}
    for name, m in model.named_modules():
        if isinstance(m, RemovedBlock) and name:
            out[name] = {"kind": "removed"}
        elif isinstance(m, nn.Conv2d):
            out[name] = {"kind": "conv2d", "in_channels": m.in_channels,
                         "out_channels": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.BatchNorm2d):
            out[name] = {"kind": "batchnorm2d", "num_features": m.num_features}
        elif isinstance(m, nn.Linear):
            out[name] = {"kind": "linear", "in_features": m.in_features,
                         "out_features": m.out_features}
    return out


def save(model: nn.Module, path: str | os.PathLike, *, spec: ModelSpec | None = None) -> Path:
    """Write ``model`` to ``path`` (a ``.safetensors`` file) atomically; return the path."""
    from safetensors.torch import save_file

    from edgeprune._version import __version__

    spec = spec or spec_of(model)
    if spec is None:
        raise ConfigError(
            "model has no architecture record; pass spec=ModelSpec('module:factory', ...) "
            "or create it with edgeprune.models.create"
        )
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"checkpoint path {str(path)!r} must end in .safetensors")
    header = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "architecture": spec.architecture,
        "arch_kwargs": spec.arch_kwargs,
        "layers": layer_shapes(model),
        "input": spec.input.to_dict(),
        "edgeprune_version": __version__,
        "metadata": spec.metadata,
    }
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_HEADER_KEY: json.dumps(header)})
    return path


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The edgeprune header of a checkpoint, validated, without loading the tensors."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    _refuse_pickle(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a readable safetensors file: {e}") from e
    if _HEADER_KEY not in meta:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has no edgeprune spec in its header; save it with edgeprune.save"
        )
    try:
        header = json.loads(meta[_HEADER_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {str(path)!r} has a corrupt edgeprune spec: {e}") from e
    if header.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} has format {header.get('format')!r}, expected {FORMAT!r}")
    if header.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has schema_version {header.get('schema_version')!r}; "
            f"this edgeprune reads {SCHEMA_VERSION}"
        )
    for key in ("architecture", "arch_kwargs", "layers", "input"):
        if key not in header:
            raise CheckpointError(f"checkpoint {str(path)!r} spec lacks {key!r}")
    return header


def _refuse_pickle(path: Path) -> None:
    """A torch.save file (a zip archive holding a pickle, or a bare pickle) gets a message
    that says what it is and how to convert it, not a safetensors parse error."""
    with path.open("rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04") or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
        raise CheckpointError(
            f"checkpoint {str(path)!r} is a torch pickle (torch.save), which edgeprune never loads: "
            "unpickling can run code; convert it once, where you trust the file: "
            "model.load_state_dict(torch.load(path, weights_only=True)), then "
            "edgeprune.save(model, 'model.safetensors', spec=...) (docs/checkpoints.md)")


def read_spec(path: str | os.PathLike) -> ModelSpec:
    header = read_header(path)
    try:
        return ModelSpec(header["architecture"], dict(header["arch_kwargs"]),
                         InputSpec.from_dict(header["input"]), dict(header.get("metadata", {})))
    except EdgepruneError as e:
        raise CheckpointError(f"checkpoint {str(path)!r} has an invalid spec: {e}") from e


def load(path: str | os.PathLike) -> nn.Module:
    """Rebuild the model saved at ``path`` (pruned widths included), in eval mode.

    The returned model carries its :class:`ModelSpec` as ``model.edgeprune_spec``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    header = read_header(path)
    spec = read_spec(path)
    try:
        model = spec.build()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: architecture {spec.architecture!r} "
                              f"rejects arch_kwargs {spec.arch_kwargs}: {e}") from e
    _resize_layers(model, header["layers"], path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} tensors cannot be read: {e}") from e
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match architecture {spec.architecture!r}: "
            f"missing tensors {missing[:5]}, unexpected tensors {extra[:5]}"
        )
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"checkpoint {str(path)!r}: tensor {k!r} has shape {tuple(v.shape)} but the "
                f"rebuilt model expects {tuple(own[k].shape)}; the file's layer widths are inconsistent"
            )
    model.load_state_dict(tensors, strict=True)
    model.eval()
    setattr(model, SPEC_ATTR, spec)
    return model


def _resize_layers(model: nn.Module, layers: dict[str, dict], path: Path) -> None:
    modules = dict(model.named_modules())
    removed = [n for n, rec in layers.items() if rec.get("kind") == "removed"]
    for name in removed:  # blocks removed by pruning first: their layers are not recorded
        if name not in modules or not name:
            raise CheckpointError(f"checkpoint {str(path)!r} names layer {name!r}, which the "
                                  "architecture does not have")
        model.set_submodule(name, RemovedBlock())
    modules = dict(model.named_modules())
    for name, rec in layers.items():
        if rec.get("kind") == "removed":
            continue
        old = modules.get(name)
        if old is None:
            raise CheckpointError(f"checkpoint {str(path)!r} names layer {name!r}, which the "
                                  "architecture does not have")
        new = _resized(old, rec)
        if new is None:
            raise CheckpointError(f"checkpoint {str(path)!r}: layer {name!r} is {type(old).__name__} "
                                  f"but the file records {rec.get('kind')!r}")
        if new is not old:
            model.set_submodule(name, new)


def _resized(m: nn.Module, rec: dict) -> nn.Module | None:
    kind = rec.get("kind")
    if kind == "conv2d" and isinstance(m, nn.Conv2d):
        want = (rec["in_channels"], rec["out_channels"], rec["groups"])
        if want == (m.in_channels, m.out_channels, m.groups):
            return m
        return nn.Conv2d(want[0], want[1], m.kernel_size, m.stride, m.padding, m.dilation,
                         groups=want[2], bias=m.bias is not None, padding_mode=m.padding_mode)
    if kind == "batchnorm2d" and isinstance(m, nn.BatchNorm2d):
        if rec["num_features"] == m.num_features:
            return m
        return nn.BatchNorm2d(rec["num_features"], m.eps, m.momentum, m.affine, m.track_running_stats)
    if kind == "linear" and isinstance(m, nn.Linear):
        if (rec["in_features"], rec["out_features"]) == (m.in_features, m.out_features):
            return m
        return nn.Linear(rec["in_features"], rec["out_features"], bias=m.bias is not None)
    return None
