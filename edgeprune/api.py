"""Public verbs that span layers: they resolve targets and profiles, then call a layer."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from edgeprune.data import input_of
from edgeprune.errors import ConfigError, ProfileError
from edgeprune.profile import LatencyProfile, Target, load_target
from edgeprune.prune.config import PruneConfig
from edgeprune.prune.cost import Cost, LatencyCost, MacsCost
from edgeprune.prune.pruner import PruneResult, run
from edgeprune.types import Progress


def prune(model: nn.Module, data: Iterable, *, target: str | Target,
          profile: LatencyProfile | str | os.PathLike | None = None,
          budget_ms: float | None = None, budget_ratio: float | None = None,
          config: PruneConfig = PruneConfig(),
          on_progress: Callable[[Progress], None] | None = None) -> PruneResult:
    """Prune ``model`` (never modified) to a latency budget on ``target``, without labels.

    ``data``: re-iterable unlabeled input batches (tensors, or tuples whose first element is
    the input). Exactly one of ``budget_ms`` (milliseconds predicted on the target; millions
    of MACs for the ``macs`` target) or ``budget_ratio`` (fraction of the baseline's
    predicted cost, e.g. 0.5). ``profile``: the target's latency profile of this
    architecture (a :class:`LatencyProfile` or its JSON file); when None it is measured now
    with :func:`edgeprune.profile` (progress stage "profile").
    """
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
    shape = tuple(input_of(next(iter(data))).shape[1:])
    cost = _cost(model, t, profile, shape, on_progress)
    baseline = cost.of_model(model)
    budget = budget_ms if budget_ms is not None else budget_ratio * baseline  # type: ignore[operator]
    round_to = config.round_to or t.round_to
    with _distributed():
        return run(model, data, cost=cost, budget=float(budget), target=t.name, round_to=round_to,
                   config=config, on_progress=on_progress)


@dataclass(frozen=True)
class BudgetRange:
    """The costs a pruning of ``model`` can reach on a target, in ``unit`` ("ms" predicted, or
    "MMACs"): from ``baseline`` (unpruned) down to ``floor`` (every channel group at its
    narrowest width, ``max(min_width, round_to)``)."""

    baseline: float
    floor: float
    unit: str

    @property
    def floor_ratio(self) -> float:
        return self.floor / self.baseline


def budget_range(model: nn.Module, *, target: str | Target,
                 profile: LatencyProfile | str | os.PathLike | None = None,
                 input_shape: tuple[int, int, int] | None = None,
                 config: PruneConfig = PruneConfig()) -> BudgetRange:
    """How far :func:`prune` can go on ``target`` with ``config``'s widths, without training:
    a budget below ``floor`` is refused. ``profile`` as for :func:`prune` (measured now when
    None); ``input_shape`` (C, H, W) defaults to the profile's or the model's spec."""
    from edgeprune.prune.select import width_floor
    from edgeprune.prune.structure import WidthMap, group_structure

    t = load_target(target)
    if input_shape is None:
        if isinstance(profile, LatencyProfile):
            input_shape = profile.input_shape
        else:
            spec = getattr(model, "edgeprune_spec", None)
            if spec is None:
                raise ConfigError("model has no input spec; pass input_shape=(C, H, W)")
            input_shape = spec.input.shape
    shape = tuple(input_shape)
    cost = _cost(model, t, profile, shape, None)
    groups = group_structure(model, torch.zeros(1, *shape))
    widthmap = WidthMap(model, groups)
    round_to = config.round_to or t.round_to
    floor = width_floor({g.name: g.width for g in groups}, round_to=round_to,
                        min_width=config.min_width or round_to)
    return BudgetRange(cost(widthmap({})), cost(widthmap(floor)), cost.unit)


def _cost(model: nn.Module, t: Target, profile: LatencyProfile | str | os.PathLike | None,
          input_shape: tuple[int, ...], on_progress: Callable[[Progress], None] | None) -> Cost:
    """The pruner's cost on ``t``: MACs for an analytical target, else the latency profile
    (loaded, checked against this host for a local target, or measured now)."""
    if t.is_analytical:
        if profile is not None:
            raise ConfigError(f"target {t.name!r} is analytical (MACs); it takes no latency profile")
        return MacsCost(model, input_shape)  # type: ignore[arg-type]
    if profile is None:
        from edgeprune.profile import profile as measure_profile

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
