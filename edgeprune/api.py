"""The public verbs: plain functions, the thing acted on positional, options keyword-only, the
same names across verbs (``target``, ``data``, ``input_shape``, ``on_progress``).

    profile(model, *, target, ...)            -> LatencyProfile   per-layer latency tables
    measure(model_or_artifact, *, target)     -> LatencyStats     end-to-end latency
    prune(model, data, *, target, budget_*)   -> PruneResult      label-free, to a budget
    budget_range(model, *, target, ...)       -> BudgetRange      how far pruning can go
    export(model, out_dir, *, data, config)   -> Bundle           TFLite/int8/CoreML/ONNX
    validate(bundle, data, *, on)             -> ValidationReport artifacts vs PyTorch
    check(budgets)                            -> BudgetReport     latency budgets, a CI gate

A model needs no edgeprune spec: its input shape comes from ``input_shape=``, else from the
first batch of ``data``, else from the spec a checkpoint or the zoo gave it. No verb modifies
the caller's model. Each imports its layer when called, so ``import edgeprune`` stays light.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeprune.errors import ConfigError, ProfileError
from edgeprune.types import LatencyStats, Progress

if TYPE_CHECKING:
    from torch import nn

    from edgeprune.budgets import Budget, BudgetReport
    from edgeprune.bundle import Bundle, ExportConfig
    from edgeprune.models.checkpoint import ModelSpec
    from edgeprune.profiling.latency import LatencyProfile
    from edgeprune.pruning.config import PruneConfig
    from edgeprune.pruning.cost import Cost
    from edgeprune.pruning.result import PruneResult
    from edgeprune.targets import Target
    from edgeprune.validation.report import ValidationReport

def input_shape_of(model: nn.Module, *, data: Iterable | None = None,
                   input_shape: Sequence[int] | None = None) -> tuple[int, int, int]:
    """(C, H, W) for ``model``: ``input_shape`` if given, else one sample of ``data``'s first
    batch, else the model's spec (from ``edgeprune.load`` or the zoo)."""
    from edgeprune.data import input_of
    from edgeprune.models.checkpoint import spec_of

    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
    elif data is not None:
        shape = tuple(input_of(next(iter(data))).shape[1:])
    else:
        spec = spec_of(model)
        if spec is None:
            raise ConfigError(f"{type(model).__name__} has no input spec: pass data= (its batches give "
                              "the input shape) or input_shape=(C, H, W)")
        shape = spec.input.shape
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"input shape {shape} is invalid; give (C, H, W) of one sample")
    return shape  # type: ignore[return-value]


def profile(model: nn.Module, *, target: str | Target, data: Iterable | None = None,
            input_shape: Sequence[int] | None = None, max_points: int = 8,
            cache: LatencyProfile | None = None, workers: int | None = None,
            layer_cache: str | os.PathLike | bool = True,
            on_progress: Callable[[Progress], None] | None = None) -> LatencyProfile:
    """Measure a latency profile of ``model``'s architecture on ``target``: per-layer tables
    on the target's runtime plus a fitted remainder, so it predicts any pruned variant.

    ``max_points`` caps the grid points per width axis. ``cache``: an earlier profile of the
    same target, runtime version and host whose points are reused. ``workers``: converter
    processes (default 2 for LiteRT). ``layer_cache``: converted single-layer models kept for
    reuse by any profile of the same runtime and precision (True: ``$EDGEPRUNE_LAYER_CACHE`` or
    ``~/.cache/edgeprune/layer-models``; a directory; False: none). A profile of a local
    target describes this machine only.
    """
    from edgeprune.profiling.latency import profile as measure_profile

    shape = input_shape_of(model, data=data, input_shape=input_shape)
    return measure_profile(model, target, input_shape=shape, max_points=max_points, cache=cache,
                           workers=workers, layer_cache=layer_cache, on_progress=on_progress)


def measure(model_or_artifact: nn.Module | str | os.PathLike, *, target: str | Target,
            data: Iterable | None = None, input_shape: Sequence[int] | None = None) -> LatencyStats:
    """End-to-end latency of a model (converted for the target first) or of an artifact file,
    on ``target``'s runtime with its threads and protocol (fastest of interleaved passes). A
    failure raises; it is never zero. On an int8 target a model is converted with synthetic
    calibration (its latency is the real int8 model's); an artifact must be an int8 file."""
    from torch import nn

    from edgeprune.profiling.measurement import measure as measure_latency

    if isinstance(model_or_artifact, nn.Module):
        shape = input_shape_of(model_or_artifact, data=data, input_shape=input_shape)
        return measure_latency(model_or_artifact, target, input_shape=shape)
    return measure_latency(model_or_artifact, target)


def prune(model: nn.Module, data: Iterable, *, target: str | Target,
          budget_ms: float | None = None, budget_ratio: float | None = None,
          profile: LatencyProfile | str | os.PathLike | None = None,
          config: PruneConfig | None = None,
          on_progress: Callable[[Progress], None] | None = None) -> PruneResult:
    """Prune ``model`` (never modified) to a latency budget on ``target``, without labels.

    ``data``: re-iterable unlabeled input batches (tensors, or tuples whose first element is
    the input). Exactly one of ``budget_ms`` (milliseconds on the target; millions of MACs
    for the ``macs`` target) or ``budget_ratio`` (fraction of the baseline's latency, e.g.
    0.5). ``profile``: the target's latency profile of this architecture (a
    :class:`LatencyProfile` or its JSON file; a local target's must have been measured on
    this machine); when None it is measured now (progress stage "profile").

    The profile's prediction steers the pruning. With ``config.verify`` (the default on a
    local target) the result is also measured: converted and timed on the target with its
    protocol, beside the baseline for a ``budget_ratio`` (their measured ratio must meet it),
    alone for a ``budget_ms``; while it measures over the budget, pruning continues toward a
    tighter internal budget (``PruneResult.verify`` has every round). It is measured once
    before that too, where the ramp reaches the budget (``config.verify_early``), so that a
    correction comes while most of the training is still to come (``PruneResult.ramp_check``).
    Without ``verify``, the budget is met in prediction only.
    """
    from edgeprune.pruning.config import PruneConfig
    from edgeprune.pruning.pruner import run
    from edgeprune.targets import load_target

    config = PruneConfig() if config is None else config
    if not isinstance(config, PruneConfig):
        raise ConfigError(f"config must be a PruneConfig, got {type(config).__name__}")
    if (budget_ms is None) == (budget_ratio is None):
        raise ConfigError("give exactly one of budget_ms (e.g. 2.5) or budget_ratio (e.g. 0.5)")
    for name, v in (("budget_ms", budget_ms), ("budget_ratio", budget_ratio)):
        if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0):
            raise ConfigError(f"{name}={v!r} is invalid; need a finite number > 0")
    if budget_ratio is not None and budget_ratio > 1:
        raise ConfigError(f"budget_ratio={budget_ratio} is invalid; need 0 < ratio <= 1 "
                          "(0.5 = half the baseline's predicted latency)")
    t = load_target(target)
    cost = _cost(model, t, profile, input_shape_of(model, data=data), on_progress)
    baseline = cost.of_model(model)
    budget = budget_ms if budget_ms is not None else budget_ratio * baseline  # type: ignore[operator]
    round_to = config.round_to or t.round_to
    verify = config.verify if config.verify is not None else (t.is_local and not t.is_analytical)
    with contextlib.ExitStack() as stack:
        measure = None
        if verify:
            from edgeprune.profiling.measurement import check_measurable

            check_measurable(t)  # before any training: a target that cannot be timed fails now
            work = stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeprune-verify-"))
            measure = _measure_against_budget(model, t, input_shape_of(model, data=data), work,
                                              budget_ms=budget_ms, budget_ratio=budget_ratio)
        stack.enter_context(_distributed())
        return run(model, data, cost=cost, budget=float(budget), target=t.name, round_to=round_to,
                   config=config, measure=measure, on_progress=on_progress)


VERIFY_TIMING_ROUNDS = 5  # runs of the target's timing protocol per closed-loop measurement


def _measure_against_budget(model: nn.Module, t: Target, shape: tuple[int, int, int], work: str, *,
                            budget_ms: float | None, budget_ratio: float | None
                            ) -> Callable[[nn.Module], tuple[float, float, list[tuple[float, float]]]]:
    """``measure(pruned) -> (measured ms, budget ms, each run's (ms, budget ms))`` on ``t``:
    for a ratio budget the pruned model is timed interleaved with the baseline (converted
    once) and the budget is the ratio of the baseline measured in that same run, so drift on
    the machine hits both alike. The numbers are the medians of ``VERIFY_TIMING_ROUNDS`` runs
    of the target's protocol (one run of it moved by about 10% on a noisy host); the pruner
    acts on an excess only when every run shows it (``PruneConfig.verify_strict``)."""
    from pathlib import Path

    import torch

    from edgeprune.profiling.measurement import convert_for, time_rounds
    from edgeprune.targets import ARTIFACT_SUFFIX

    example = torch.zeros(1, *shape)
    suffix = ARTIFACT_SUFFIX[t.runtime]
    base = (convert_for(model, t, Path(work) / f"baseline{suffix}", example)
            if budget_ratio is not None else None)
    calls = [0]

    def measure(pruned: nn.Module) -> tuple[float, float, list[tuple[float, float]]]:
        calls[0] += 1
        art = convert_for(pruned, t, Path(work) / f"pruned-{calls[0]}{suffix}", example)
        if base is None:
            ms, runs = time_rounds([art], t, VERIFY_TIMING_ROUNDS)
            return ms[0], float(budget_ms), [(r[0], float(budget_ms)) for r in runs]  # type: ignore[arg-type]
        ms, runs = time_rounds([base, art], t, VERIFY_TIMING_ROUNDS)
        return ms[1], budget_ratio * ms[0], [(r[1], budget_ratio * r[0]) for r in runs]  # type: ignore[operator]

    return measure


@dataclass(frozen=True)
class BudgetRange:
    """The costs a pruning of a model can reach on a target, in ``unit`` ("ms" predicted, or
    "MMACs"): from ``baseline`` (unpruned) down to ``floor`` (every channel group at its
    narrowest width, ``max(min_width, round_to)``, and, unless the config forbids it, every
    removable residual block removed). ``channel_floor``: the floor of channel pruning alone
    (below it, ``remove_blocks=None`` turns block removal on)."""

    baseline: float
    floor: float
    unit: str
    channel_floor: float | None = None

    @property
    def floor_ratio(self) -> float:
        return self.floor / self.baseline


def budget_range(model: nn.Module, *, target: str | Target, data: Iterable | None = None,
                 input_shape: Sequence[int] | None = None,
                 profile: LatencyProfile | str | os.PathLike | None = None,
                 config: PruneConfig | None = None) -> BudgetRange:
    """How far :func:`prune` can go on ``target`` with ``config``'s widths, without training:
    a budget below ``floor`` is refused. ``profile`` as for :func:`prune` (measured now when
    None)."""
    import torch

    from edgeprune.graph import WidthMap, group_structure
    from edgeprune.graph.blocks import residual_blocks
    from edgeprune.pruning.config import PruneConfig
    from edgeprune.pruning.select import check_blockless_cost, width_floor
    from edgeprune.targets import load_target

    config = PruneConfig() if config is None else config
    t = load_target(target)
    if input_shape is None and data is None and _is_profile(profile):
        input_shape = profile.input_shape  # type: ignore[union-attr]
    shape = input_shape_of(model, data=data, input_shape=input_shape)
    cost = _cost(model, t, profile, shape, None)
    example = torch.zeros(1, *shape)
    groups = group_structure(model, example)
    blocks = residual_blocks(model, example) if config.remove_blocks is not False else []
    widthmap = WidthMap(model, groups, blocks)
    round_to = config.round_to or t.round_to
    floor = width_floor({g.name: g.width for g in groups}, round_to=round_to,
                        min_width=config.min_width or round_to)
    smallest = cost(widthmap({**floor, **{b.name: 0 for b in blocks}}))
    channel_floor = cost(widthmap(floor))
    check_blockless_cost(smallest, cost.unit, len(blocks), channel_floor)
    return BudgetRange(cost(widthmap({})), smallest, cost.unit, channel_floor)


def export(model: nn.Module, out_dir: str | os.PathLike, *, data: Iterable | None = None,
           input_shape: Sequence[int] | None = None, config: ExportConfig | None = None,
           spec: ModelSpec | None = None, force: bool = False,
           on_progress: Callable[[Progress], None] | None = None) -> Bundle:
    """Export ``model`` (never modified) to ``config.formats`` in ``out_dir`` with model.json,
    the PyTorch source checkpoint and a README with Android / iOS loading code.

    ``data``: normalised NCHW batches (the pruner's unlabeled data): int8 calibration
    (required for ``tflite-int8``), the export-time parity check, and the input shape of a
    model without a spec. ``spec``: a ModelSpec for the source checkpoint (default: the
    model's own; a plain module is recorded as ``module:Class``, built without arguments).
    ``out_dir`` must be new or empty; ``force=True`` replaces an existing bundle there. The
    bundle is built beside ``out_dir`` and moved into place when complete, so ``out_dir``
    never mixes two models and a failed export leaves it as it was.
    """
    from edgeprune.bundle.build import ExportConfig, build

    return build(model, out_dir, data=data,
                 input_shape=tuple(input_shape) if input_shape is not None else None, spec=spec,
                 config=ExportConfig() if config is None else config, force=force,
                 on_progress=on_progress)


def validate(bundle: Bundle | str | os.PathLike, data: Iterable, *, on: Sequence[str] = ("host",),
             max_images: int = 1000,
             on_progress: Callable[[Progress], None] | None = None) -> ValidationReport:
    """Check every artifact of ``bundle`` against its PyTorch source checkpoint on ``data``
    (normalised NCHW batches, or (x, labels) for accuracy) on each of ``on``: "host" (this
    machine's runtimes) and device targets, reached through their agent (``arm64-emulated``:
    the aarch64 builds of LiteRT and ONNX Runtime under QEMU; a Raspberry Pi; ...)."""
    from edgeprune.validation.report import validate as run_validation

    return run_validation(bundle, data, on=on, max_images=max_images, on_progress=on_progress)


def check(budgets: str | os.PathLike | Sequence[Budget], *,
          on_progress: Callable[[Progress], None] | None = None) -> BudgetReport:
    """Measure (on the target, through its agent for a device) or predict (from the target's
    latency profile) every latency budget: a budgets file (``edgeprune-budgets.toml``) or
    :class:`~edgeprune.budgets.Budget` objects. ``report.exit_code`` is 0 when all are within
    budget, 1 when one is blown, 2 when one could not be measured."""
    from edgeprune.budgets import check as run_check
    from edgeprune.budgets import load_budgets

    if isinstance(budgets, (str, os.PathLike)):
        budgets = load_budgets(budgets)
    return run_check(list(budgets), on_progress=on_progress)


def _is_profile(obj: object) -> bool:
    from edgeprune.profiling.latency import LatencyProfile

    return isinstance(obj, LatencyProfile)


def _cost(model: nn.Module, t: Target, profile: LatencyProfile | str | os.PathLike | None,
          input_shape: tuple[int, ...], on_progress: Callable[[Progress], None] | None) -> Cost:
    """The pruner's cost on ``t``: MACs for an analytical target, else the latency profile
    (loaded, checked against this host for a local target, or measured now)."""
    from edgeprune.profiling.latency import LatencyProfile
    from edgeprune.profiling.latency import profile as measure_profile
    from edgeprune.pruning.cost import LatencyCost, MacsCost

    if t.is_analytical:
        if profile is not None:
            raise ConfigError(f"target {t.name!r} is analytical (MACs); it takes no latency profile")
        return MacsCost(model, input_shape)  # type: ignore[arg-type]
    if profile is None:
        profile = measure_profile(model, t, input_shape=input_shape, on_progress=on_progress)
    elif not isinstance(profile, LatencyProfile):
        profile = LatencyProfile.load(profile, target=t)
    else:
        profile.check_host()
    if profile.target.name != t.name:
        raise ProfileError(f"the profile was measured for target {profile.target.name!r}, not "
                           f"{t.name!r}; profile this target or pass its profile")
    return LatencyCost(profile, model)


@contextlib.contextmanager
def _distributed():
    """Under ``torchrun`` (WORLD_SIZE > 1) with no process group yet, start a gloo group for
    the run and end it afterwards, so the same script runs data-parallel unchanged."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")
        try:
            yield
        finally:
            dist.destroy_process_group()
    else:
        yield
