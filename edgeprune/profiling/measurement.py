"""End-to-end latency of a model or an artifact on a target's runtime."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeprune.errors import ConfigError, ProfileError
from edgeprune.targets import ARTIFACT_SUFFIX, Target, load_target
from edgeprune.types import LatencyStats


def check_measurable(target: Target) -> None:
    """Raise unless ``target`` can be measured, a model converted for it or a file. Local
    targets run here; device targets through their agent; the emulated aarch64 targets never
    (their timing means nothing)."""
    if target.is_analytical:
        raise ConfigError(f"target {target.name!r} is analytical (MACs); it has no latency to measure")
    if target.is_emulated:
        raise ConfigError(
            f"target {target.name!r} runs under emulation ({target.connection}): its latency means "
            "nothing for a device, so edgeprune does not measure it; use it to validate "
            "(edgeprune validate BUNDLE --on " + target.name + "), and measure on a device target")
    if target.runtime not in ARTIFACT_SUFFIX:
        why = (" (CoreML timing needs Apple hardware: measure in Xcode's performance report on the "
               "device; see docs/devices.md)" if target.runtime == "coreml" else "")
        raise ConfigError(f"target {target.name!r}: runtime {target.runtime!r} cannot be measured by "
                          f"edgeprune{why}; it measures {sorted(ARTIFACT_SUFFIX)}")
    if target.precision == "int8" and target.runtime == "litert":
        return  # an int8 .tflite as it is, or a model converted with synthetic calibration
    if target.precision != "fp32":
        raise ConfigError(
            f"target {target.name!r}: {target.runtime} at {target.precision} cannot be measured by "
            "edgeprune; it measures fp32 (LiteRT, ONNX Runtime) and int8 (LiteRT) targets")


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


SYNTHETIC_CALIBRATION_IMAGES = 8


def synthetic_calibration(example_input: torch.Tensor, *, seed: int = 0,
                          images: int = SYNTHETIC_CALIBRATION_IMAGES) -> list[torch.Tensor]:
    """Calibration batches for an int8 conversion that is only timed: standard normal noise
    of the example's shape, from a fixed seed.

    An int8 graph's latency does not depend on its quantisation ranges: every scale and
    zero-point is a constant the kernels apply the same way whatever its value, so the
    converted graph (ops, shapes, dtypes) is the one real calibration data gives, and so is
    its latency. ``scripts/bench_latency_predictor.py`` checks this on every zoo model: two
    synthetic calibrations (this one, and uniform noise of another range) time alike
    (bench/results/latency_predictor.json, ``calibration_independence``).
    """
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((images, *example_input.shape[1:]), generator=g)]


def convert_for(model: nn.Module, target: Target, path: str | os.PathLike,
                example_input: torch.Tensor, *, fast: bool = False) -> Path:
    """Convert ``model`` into the artifact ``target`` runs: fp32 TFLite or ONNX, or for an int8
    LiteRT target a full-int8 TFLite calibrated on :func:`synthetic_calibration` (timing only:
    its accuracy means nothing; export with real data to ship). ``fast`` picks the faster
    ONNX exporter (used for single-layer models, whose graphs come out the same)."""
    from edgeprune.convert import to_onnx, to_tflite, to_tflite_int8

    check_measurable(target)
    if target.runtime == "litert" and target.precision == "int8":
        cal = synthetic_calibration(example_input)
        return to_tflite_int8(model, path, example_input, cal, min_images=len(cal[0]),
                              logits="full")
    if target.runtime == "litert":
        return to_tflite(model, path, example_input)
    return to_onnx(model, path, example_input, dynamic_batch=False,
                   exporter="torchscript" if fast else "dynamo")


def time_artifact(path: str | os.PathLike, target: Target, *, seed: int = 0) -> LatencyStats:
    """Latency of one artifact under ``target``'s protocol (see :func:`time_artifacts`)."""
    return time_artifacts([path], target, seed=seed)[0]


def time_artifacts(paths: Sequence[str | os.PathLike], target: Target, *, seed: int = 0,
                   on_pass: Callable[[int, int], None] | None = None, device=None,
                   passes: int | None = None) -> list[LatencyStats]:
    """Latency of each artifact under ``target``'s protocol: ``measure.passes`` passes over all
    of them in turn, each a fresh session with warm-up then timed runs. Each artifact reports
    its fastest pass (interference only ever slows a pass down), with every pass median kept.
    Interleaving means drift on the machine hits all artifacts alike. ``on_pass(i, n)`` is
    called after each artifact's pass (on a device: after each batch of artifacts). A device
    target times them on the device, through its agent (``device``: an open connection to
    reuse), with the same protocol. Locally, ``$EDGEPRUNE_TIMING_CPUS`` pins the timing to
    those CPUs (see :func:`_timing_cpus`). ``passes`` replaces the protocol's number of passes
    (:class:`SpreadTiming` runs a protocol's passes in several rounds)."""
    check_measurable(target)
    if passes is not None and passes < 1:
        raise ValueError(f"passes={passes}: time at least one pass")
    if target.is_device:
        from edgeprune.runtimes.device import connect

        if device is not None:
            return device.measure_many(list(paths), on_pass=on_pass, passes=passes)
        with connect(target) as dev:
            return dev.measure_many(list(paths), on_pass=on_pass, passes=passes)
    with _timing_cpus():
        return _time_local(paths, target, seed, on_pass, passes or target.measure.passes)


TIMING_CPUS_ENV = "EDGEPRUNE_TIMING_CPUS"


def time_rounds(paths: Sequence[str | os.PathLike], target: Target, rounds: int,
                **kw) -> tuple[list[float], list[list[float]]]:
    """``rounds`` runs of :func:`time_artifacts` (seeds 0, 1, ...): each artifact's median
    over the runs, and every run's values ``[run][artifact]``. One run of the protocol moved
    by about 10% on a noisy host; a number something acts on is the median of several."""
    import statistics

    per_round = [[st.median_ms for st in time_artifacts(paths, target, seed=k, **kw)]
                 for k in range(rounds)]
    return [statistics.median(r[i] for r in per_round) for i in range(len(paths))], per_round


class SpreadTiming:
    """:func:`time_artifacts`'s passes over ``paths``, run in ``rounds`` calls of
    :meth:`round` that a caller spreads over a longer job (with other timing between them):
    each artifact reports its fastest pass of all rounds (:meth:`result`). The protocol's
    passes, 1 s apart, span a few seconds, and a slow spell of this project's VMs can last
    that long (every pass alike); passes drawn over minutes are not all in one."""

    def __init__(self, paths: Sequence[str | os.PathLike], target: Target, rounds: int, **kw):
        if rounds < 1:
            raise ValueError(f"rounds={rounds}: time at least one round")
        passes = target.measure.passes
        self.paths, self.target, self.kw = list(paths), target, kw
        self.todo = [k for i in range(rounds) if (k := passes // rounds + (i < passes % rounds))]
        self.stats: list[list[LatencyStats]] = []

    def round(self) -> None:
        """Time the next round (nothing once every pass is timed)."""
        if len(self.stats) < len(self.todo):
            self.stats.append(time_artifacts(self.paths, self.target, seed=len(self.stats),
                                             passes=self.todo[len(self.stats)], **self.kw))

    def result(self) -> list[LatencyStats]:
        """Each artifact's fastest pass over every round (the remaining rounds timed now)."""
        while len(self.stats) < len(self.todo):
            self.round()
        return [_fastest_pass(per) for per in zip(*self.stats, strict=True)]


@contextlib.contextmanager
def _timing_cpus():
    """Pin the timing loop (the thread that times, while it times) to the CPUs in
    ``$EDGEPRUNE_TIMING_CPUS`` (e.g. ``1`` or ``2,3``), then restore the affinity. For hosts
    whose cores differ in speed (a cloud VM's vCPUs, big and little cores): unpinned, one pass
    may run on a fast core and the next on a slow one, and the fastest pass is not comparable
    between artifacts. Conversions are not pinned. Unset: nothing changes."""
    spec = os.environ.get(TIMING_CPUS_ENV, "").strip()
    if not spec:
        yield
        return
    try:
        cpus = {int(c) for c in spec.split(",") if c.strip()}
    except ValueError:
        raise ConfigError(f"{TIMING_CPUS_ENV}={spec!r} is invalid; give CPU numbers, e.g. 1 or 2,3") from None
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError(f"{TIMING_CPUS_ENV} is set but this OS cannot pin a process to CPUs; unset it")
    old = os.sched_getaffinity(0)
    if not cpus or not cpus <= old:
        raise ConfigError(f"{TIMING_CPUS_ENV}={spec!r}: this process may run on CPUs {sorted(old)}; "
                          "choose among them")
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def _time_local(paths: Sequence[str | os.PathLike], target: Target, seed: int,
                on_pass: Callable[[int, int], None] | None, passes: int) -> list[LatencyStats]:
    from edgeprune.runtimes import open_session, time_session

    interval = target.measure.pass_interval_s
    per: list[list[LatencyStats]] = [[] for _ in paths]
    n, done = passes * len(paths), 0
    started = None
    for _ in range(passes):
        # a round shorter than the interval waits: the passes of a short measurement would
        # otherwise all fall within one speed state of the machine (docs/profiles.md)
        if started is not None and (wait := started + interval - time.monotonic()) > 0:
            time.sleep(wait)
        started = time.monotonic()
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
    return [_fastest_pass(stats) for stats in per]


def _fastest_pass(stats: Sequence[LatencyStats]) -> LatencyStats:
    """The fastest of ``stats`` (passes or rounds of one artifact), with every pass median."""
    best = min(stats, key=lambda st: st.median_ms)
    medians = tuple(m for st in stats for m in (st.pass_medians_ms or (st.median_ms,)))
    return replace(best, passes=len(medians), pass_medians_ms=medians)


def measure(model_or_artifact: nn.Module | str | os.PathLike, target: str | Target, *,
            input_shape: tuple[int, ...] | None = None) -> LatencyStats:
    """Latency of a model (converted for the target first) or of an artifact file, measured on
    ``target``'s runtime with its threads and protocol (a device target's through its agent:
    reached, and checked to have the runtime, before anything is converted). A failure
    raises; it is never zero. On an int8 target a model is converted with synthetic calibration
    (:func:`synthetic_calibration`: the latency is that of the real int8 model), and an
    artifact must be an int8 file."""
    t = load_target(target)
    is_model = isinstance(model_or_artifact, nn.Module)
    check_measurable(t)
    if not is_model:
        path = Path(model_or_artifact)
        if not path.is_file():
            raise ProfileError(f"artifact {str(path)!r} does not exist")
        if path.suffix != ARTIFACT_SUFFIX[t.runtime]:
            raise ConfigError(f"artifact {str(path)!r} is not a {ARTIFACT_SUFFIX[t.runtime]} file, which "
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
        path = convert_for(model_or_artifact, t, Path(d) / f"model{ARTIFACT_SUFFIX[t.runtime]}",
                           torch.zeros(1, *shape[-3:]))
        return time_artifacts([path], t, device=device)[0]


def _spec_shape(model: nn.Module) -> tuple[int, ...]:
    spec = getattr(model, "edgeprune_spec", None)
    if spec is None:
        raise ConfigError("model has no input spec; pass input_shape=(C, H, W)")
    return spec.input.shape
