"""End-to-end latency of a model or an artifact on a target's runtime."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeprune.errors import ConfigError, ProfileError
from edgeprune.targets import Target, load_target
from edgeprune.types import LatencyStats

_SUFFIX = {"litert": ".tflite", "onnxruntime": ".onnx"}


def check_measurable(target: Target, *, artifact: bool = False) -> None:
    """Raise unless ``target`` can be measured (``artifact``: measuring a converted file
    rather than converting a model for the target). Local targets run here; device targets
    through their agent; the emulated aarch64 targets never (their timing means nothing)."""
    if target.is_analytical:
        raise ConfigError(f"target {target.name!r} is analytical (MACs); it has no latency to measure")
    if target.is_emulated:
        raise ConfigError(
            f"target {target.name!r} runs under emulation ({target.connection}): its latency means "
            "nothing for a device, so edgeprune does not measure it; use it to validate "
            "(edgeprune validate BUNDLE --on " + target.name + "), and measure on a device target")
    if target.runtime not in _SUFFIX:
        why = (" (CoreML timing needs Apple hardware: measure in Xcode's performance report on the "
               "device; see docs/devices.md)" if target.runtime == "coreml" else "")
        raise ConfigError(f"target {target.name!r}: runtime {target.runtime!r} cannot be measured by "
                          f"edgeprune{why}; it measures {sorted(_SUFFIX)}")
    if target.precision == "int8" and target.runtime == "litert" and artifact:
        return  # an exported int8 .tflite runs as it is
    if target.precision != "fp32":
        raise ConfigError(
            f"target {target.name!r}: measuring a model at {target.precision} needs its "
            f"{target.precision} conversion, which needs calibration data; export it (edgeprune "
            "export CKPT --formats tflite-int8 --calib-data SPEC) and measure the .tflite file. "
            f"Latency profiles at {target.precision} are not built; use an fp32 target")


def _check_precision(path: Path, target: Target) -> None:
    """Refuse an artifact whose precision is not the target's (an fp32 file timed as int8)."""
    if target.runtime != "litert":
        return
    from edgeprune.runtimes import open_session

    int8 = open_session(path, runtime="litert", threads=target.threads).has_int8_tensors
    if int8 != (target.precision == "int8"):
        have = "int8" if int8 else "fp32"
        raise ConfigError(f"artifact {str(path)!r} is an {have} model but target {target.name!r} is "
                          f"{target.precision}; measure it on an {have} target"
                          + (" (host-litert-int8)" if int8 else " (host-litert)"))


def convert_for(model: nn.Module, target: Target, path: str | os.PathLike,
                example_input: torch.Tensor, *, fast: bool = False) -> Path:
    """Convert ``model`` into the artifact ``target`` runs. ``fast`` picks the faster ONNX
    exporter (used for single-layer models, whose graphs come out the same)."""
    from edgeprune.convert import to_onnx, to_tflite

    check_measurable(target)
    if target.runtime == "litert":
        return to_tflite(model, path, example_input)
    return to_onnx(model, path, example_input, dynamic_batch=False,
                   exporter="torchscript" if fast else "dynamo")


def time_artifact(path: str | os.PathLike, target: Target, *, seed: int = 0) -> LatencyStats:
    """Latency of one artifact under ``target``'s protocol (see :func:`time_artifacts`)."""
    return time_artifacts([path], target, seed=seed)[0]


def time_artifacts(paths: Sequence[str | os.PathLike], target: Target, *, seed: int = 0,
                   on_pass: Callable[[int, int], None] | None = None, device=None) -> list[LatencyStats]:
    """Latency of each artifact under ``target``'s protocol: ``measure.passes`` passes over all
    of them in turn, each a fresh session with warm-up then timed runs. Each artifact reports
    its fastest pass (interference only ever slows a pass down), with every pass median kept.
    Interleaving means drift on the machine hits all artifacts alike. ``on_pass(i, n)`` is
    called after each artifact's pass (on a device: after each batch of artifacts). A device
    target times them on the device, through its agent (``device``: an open connection to
    reuse), with the same protocol."""
    check_measurable(target, artifact=True)
    if target.is_device:
        from edgeprune.runtimes.device import connect

        if device is not None:
            return device.measure_many(list(paths), on_pass=on_pass)
        with connect(target) as dev:
            return dev.measure_many(list(paths), on_pass=on_pass)
    from edgeprune.runtimes import open_session, time_session

    passes = target.measure.passes
    per: list[list[LatencyStats]] = [[] for _ in paths]
    n, done = passes * len(paths), 0
    for _ in range(passes):
        for i, path in enumerate(paths):
            sess = open_session(path, runtime=target.runtime, threads=target.threads,
                                delegate=target.delegate)
            shape = tuple(max(1, s) for s in sess.input_shape)
            x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
            per[i].append(time_session(sess, x, warmup=target.measure.warmup, runs=target.measure.runs))
            del sess
            done += 1
            if on_pass is not None:
                on_pass(done, n)
    out = []
    for stats in per:
        best = min(stats, key=lambda st: st.median_ms)
        out.append(replace(best, passes=len(stats), pass_medians_ms=tuple(st.median_ms for st in stats)))
    return out


def measure(model_or_artifact: nn.Module | str | os.PathLike, target: str | Target, *,
            input_shape: tuple[int, ...] | None = None) -> LatencyStats:
    """Latency of a model (converted for the target first) or of an artifact file, measured on
    ``target``'s runtime with its threads and protocol (a device target's through its agent:
    reached, and checked to have the runtime, before anything is converted). A failure
    raises; it is never zero. An int8 target measures int8 artifacts (export the model first)."""
    t = load_target(target)
    is_model = isinstance(model_or_artifact, nn.Module)
    check_measurable(t, artifact=not is_model)
    if not is_model:
        path = Path(model_or_artifact)
        if not path.is_file():
            raise ProfileError(f"artifact {str(path)!r} does not exist")
        if path.suffix != _SUFFIX[t.runtime]:
            raise ConfigError(f"artifact {str(path)!r} is not a {_SUFFIX[t.runtime]} file, which "
                              f"target {t.name!r} ({t.runtime}) runs")
        _check_precision(path, t)
    with contextlib.ExitStack() as stack:
        device = None
        if t.is_device:
            from edgeprune.runtimes.device import connect

            device = stack.enter_context(connect(t))
            device.runtime_version(t.runtime)
        if not is_model:
            return time_artifacts([path], t, device=device)[0]
        shape = input_shape or _spec_shape(model_or_artifact)
        d = stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeprune-measure-"))
        path = convert_for(model_or_artifact, t, Path(d) / f"model{_SUFFIX[t.runtime]}",
                           torch.zeros(1, *shape[-3:]))
        return time_artifacts([path], t, device=device)[0]


def _spec_shape(model: nn.Module) -> tuple[int, ...]:
    spec = getattr(model, "edgeprune_spec", None)
    if spec is None:
        raise ConfigError("model has no input spec; pass input_shape=(C, H, W)")
    return spec.input.shape
