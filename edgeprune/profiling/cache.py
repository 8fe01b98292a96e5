"""A cache of converted single-layer models, so a profile converts each layer point once, and
of the end-to-end calibration networks, so re-profiling a model converts nothing again.

A profile's grid points are single-layer models whose file depends only on the layer's
signature (kind, kernel, stride, padding, dilation, input size), its widths, the runtime and
precision it is converted for, and the converter's versions; not on the model that holds the
layer, the target's threads or the device. So ResNet-20 and ResNet-56 (the same signatures),
a re-profile, and the host and a Raspberry Pi on LiteRT (converted here, timed there) share
one conversion. Converting dominates a cold LiteRT profile (litert-torch takes about a
second per layer, so most LiteRT points are derived from one converted template per
signature: ``edgeprune.profiling.latency._make_points``); timing is cheap.

The cache lives in ``$EDGEPRUNE_LAYER_CACHE``, else ``~/.cache/edgeprune/layer-models``. Files
are written atomically (temp file, then rename), so concurrent profiles can share it; a file
the runtime cannot load is an error naming it, never silently replaced. Deleting the directory
is always safe.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from edgeprune._io import atomic_path
from edgeprune.targets import ARTIFACT_SUFFIX, Target

if TYPE_CHECKING:
    from torch import nn

# bump when layer_model() or a converter's settings change the file a point converts to
LAYER_MODEL_VERSION = 1


def default_dir() -> Path:
    env = os.environ.get("EDGEPRUNE_LAYER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edgeprune" / "layer-models"


@functools.cache
def _versions(runtime: str) -> tuple[tuple[str, str], ...]:
    dists = ("torch", "litert-torch", "ai-edge-litert") if runtime == "litert" else ("torch", "onnx")
    out = []
    for d in dists:
        try:
            out.append((d, metadata.version(d)))
        except metadata.PackageNotFoundError:
            out.append((d, "absent"))
    return tuple(out)


class LayerCache:
    """Converted single-layer models under ``root``, keyed by what determines their bytes."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def key(self, signature: str, c_in: int, c_out: int, target: Target) -> str:
        return self._key({"signature": signature, "c_in": int(c_in), "c_out": int(c_out),
                          "layer_model": LAYER_MODEL_VERSION}, target)

    def _key(self, ident: dict, target: Target) -> str:
        from edgeprune._version import __version__

        ident = {**ident, "runtime": target.runtime, "precision": target.precision,
                 "edgeprune": __version__, "versions": dict(_versions(target.runtime))}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]

    def _path(self, key: str, target: Target) -> Path:
        return self.root / f"{target.runtime}-{target.precision}" / (key + ARTIFACT_SUFFIX[target.runtime])

    def path(self, signature: str, c_in: int, c_out: int, target: Target) -> Path:
        return self._path(self.key(signature, c_in, c_out, target), target)

    def get(self, signature: str, c_in: int, c_out: int, target: Target) -> Path | None:
        p = self.path(signature, c_in, c_out, target)
        return p if p.is_file() else None

    def put(self, signature: str, c_in: int, c_out: int, target: Target, src: Path) -> Path:
        """Copy a converted file into the cache (atomically) and return its cached path."""
        return self._put(self.path(signature, c_in, c_out, target), src)

    def network_path(self, key: str, target: Target) -> Path:
        """Where the whole network whose :func:`network_key` is ``key`` is cached (apart from the
        single layers: ``networks-<runtime>-<precision>/``)."""
        sub = f"networks-{target.runtime}-{target.precision}"
        return self.root / sub / (self._key({"network": key}, target) + ARTIFACT_SUFFIX[target.runtime])

    def get_network(self, key: str, target: Target) -> Path | None:
        p = self.network_path(key, target)
        return p if p.is_file() else None

    def put_network(self, key: str, target: Target, src: Path) -> Path:
        return self._put(self.network_path(key, target), src)

    @staticmethod
    def _put(dst: Path, src: Path) -> Path:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        return dst


def network_key(model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """What determines a whole network's converted file at ``input_shape`` (C, H, W), for the
    end-to-end calibration models of a profile: the code torch.fx traces (every op, its
    constants and wiring), each leaf module's type and settings, the shapes and dtypes of its
    parameters and buffers, and which of them are all zero (converters delete provably-zero
    work; see ``dense_copy``). Other weight values change no op, shape or dtype, so not the
    latency. None when torch.fx cannot trace the model: then it is converted every time."""
    import torch

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # data-dependent control flow and the like: no key, no cache
        return None
    mods = [(n, f"{type(m).__module__}.{type(m).__qualname__}", m.extra_repr())
            for n, m in gm.named_modules()]
    state = model.state_dict()
    tensors = [(n, list(t.shape), str(t.dtype)) for n, t in state.items()]
    zeros = sorted(n for n, t in state.items() if t.numel() and not bool(t.any()))
    ident = json.dumps([list(input_shape), gm.code, mods, tensors, zeros])
    return hashlib.sha256(ident.encode()).hexdigest()
