"""Runtime adapters: run an exported artifact on the runtime a device uses.

``open_session(path, runtime=..., threads=...)`` returns a :class:`Session` whose ``run`` takes
float32 NCHW input (as PyTorch does) and returns float32 outputs; layout changes and int8
(de)quantisation at the boundary are the adapter's job. Adapters are registered in one
explicit dict that refuses duplicates; each imports its runtime only when used.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from edgeprune.errors import ConfigError
from edgeprune.runtimes.base import Session, time_session

_ADAPTERS: dict[str, Callable[..., Session]] = {}


def register(name: str, opener: Callable[..., Session]) -> None:
    if name in _ADAPTERS:
        raise ConfigError(f"runtime adapter {name!r} is already registered")
    _ADAPTERS[name] = opener


def names() -> list[str]:
    return sorted(_ADAPTERS)


def open_session(path: str | os.PathLike, *, runtime: str | None = None, threads: int = 1,
                 delegate: str | None = None) -> Session:
    """Load ``path`` on ``runtime`` (default: by suffix, .tflite -> litert, .onnx -> onnxruntime)
    with ``delegate`` (a target's; default: the runtime's own, XNNPACK for LiteRT)."""
    path = Path(path)
    if runtime is None:
        runtime = {".tflite": "litert", ".onnx": "onnxruntime"}.get(path.suffix)
        if runtime is None:
            raise ConfigError(f"cannot tell the runtime of {str(path)!r}; pass runtime= one of {names()}")
    if runtime not in _ADAPTERS:
        raise ConfigError(f"unknown runtime {runtime!r}; known: {', '.join(names())}")
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads={threads!r} is invalid; need a positive integer")
    if delegate is None:
        return _ADAPTERS[runtime](path, threads=threads)
    return _ADAPTERS[runtime](path, threads=threads, delegate=delegate)


def _register_builtin() -> None:
    from edgeprune.runtimes import litert, onnxruntime

    register("litert", litert.open_litert)
    register("onnxruntime", onnxruntime.open_onnxruntime)


_register_builtin()

__all__ = ["Session", "names", "open_session", "register", "time_session"]
