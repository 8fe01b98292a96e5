"""Public verbs that span layers: they resolve targets and profiles, then call a layer."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable

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
    cost: Cost
    if t.is_analytical:
        if profile is not None:
            raise ConfigError(f"target {t.name!r} is analytical (MACs); it takes no latency profile")
        shape = tuple(input_of(next(iter(data))).shape[1:])
        cost = MacsCost(model, shape)  # type: ignore[arg-type]
    else:
        if profile is None:
            from edgeprune.profile import profile as measure_profile

            profile = measure_profile(model, t, on_progress=on_progress)
        elif not isinstance(profile, LatencyProfile):
            profile = LatencyProfile.load(profile, target=t)
        if profile.target.name != t.name:
            raise ProfileError(f"the profile was measured for target {profile.target.name!r}, not "
                               f"{t.name!r}; profile this target or pass its profile")
        cost = LatencyCost(profile, model)
    baseline = cost.of_model(model)
    budget = budget_ms if budget_ms is not None else budget_ratio * baseline  # type: ignore[operator]
    round_to = config.round_to or t.round_to
    with _distributed():
        return run(model, data, cost=cost, budget=float(budget), target=t.name, round_to=round_to,
                   config=config, on_progress=on_progress)


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
