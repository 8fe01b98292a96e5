"""Latency-weighted choice of the channels to keep (METHOD.md, "Choosing the expected-sparse
set"): greedily drop the block of channels with the least sensitivity per millisecond saved
until the predicted latency meets the budget.

Blocks are ``round_to`` channels (the runtime's kernels move in such steps), taken from the
least sensitive end of a group; a block's cost is the predicted latency difference at the
group's *current* width, so step-shaped latency curves are priced as they are. Where the
next block saves nothing (a flat stretch of the table), the group is priced as the blocks up
to the first that does, taken together: a block that saves nothing alone is no longer a wall.
A removable residual block is a group of one unit whose floor is 0: taking it removes the
block.

Greedy removal can overshoot: its last step may save far more than was still needed (a whole
block, or a large block of a wide layer). A refill pass then gives back, one step at a time,
the removed channels (or blocks) that bring the most sensitivity per millisecond, while the
budget still holds. Where residual blocks were removed, an exchange pass then tries giving
each one back and letting greedy removal elsewhere make up its time: a block can cost a large
share of the latency, so greedy removal can take three large blocks where two large ones and
a small one would do, and no single refill step fits in what is left. An exchange is
kept when it removes less sensitivity and the budget still holds.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import numpy as np

from edgeprune.errors import ConfigError, ProfileError


def width_floor(widths: Mapping[str, int], *, round_to: int, min_width: int) -> dict[str, int]:
    """The narrowest each group may become: ``max(min_width, round_to)`` channels, or its
    whole width when it is already narrower."""
    return {g: min(n, max(min_width, round_to)) for g, n in widths.items()}


def check_blockless_cost(cost: float, unit: str, blocks: int, channel_floor: float) -> None:
    """Refuse a cost model that prices the network with all ``blocks`` removable residual
    blocks removed at ``cost`` <= 0: a latency profile made before edgeprune calibrated a
    network without blocks extrapolates there (the committed ResNet-20 profile once said
    -0.0009 ms)."""
    if blocks and cost <= 0:
        raise ProfileError(
            f"the cost model predicts {cost:.4g} {unit} for the network with all {blocks} removable "
            "residual blocks removed: it has not seen networks without blocks (a latency profile made "
            "before edgeprune calibrated one); re-profile the model (edgeprune profile), or keep its "
            "blocks (remove_blocks=False; CLI: --no-remove-blocks) with a budget of at least the "
            f"channel floor {channel_floor:.4g} {unit}")


@dataclass(frozen=True)
class Selection:
    keep: dict[str, np.ndarray]  # group -> indices of kept channels (sorted)
    widths: dict[str, int]
    predicted_cost: float  # in the cost function's unit (ms or MMACs)
    met_budget: bool


def select_channels(sensitivity: Mapping[str, np.ndarray],
                    latency_ms: Callable[[Mapping[str, int]], float], budget_ms: float, *,
                    round_to: int, min_width: int, latency_weighting: bool = True,
                    blocks: Collection[str] = ()) -> Selection:
    """Keep-set maximising total sensitivity subject to ``latency_ms(widths) <= budget_ms``.

    ``sensitivity[g]``: one non-negative score per channel of group ``g``.
    ``latency_ms(widths)``: predicted latency with group widths ``{g: width}``.
    ``latency_weighting=False`` ranks blocks by sensitivity alone (plain Taylor pruning).
    ``blocks``: groups that are one removable residual block each (one score; width 1 or 0).
    """
    if round_to < 1 or min_width < 1:
        raise ConfigError(f"round_to={round_to} and min_width={min_width} must be >= 1")
    order = {g: np.argsort(np.asarray(s, dtype=np.float64), kind="stable") for g, s in sensitivity.items()}
    widths = {g: len(s) for g, s in sensitivity.items()}
    floor = width_floor(widths, round_to=round_to, min_width=min_width)
    for b in blocks:
        if widths.get(b) != 1:
            raise ConfigError(f"block {b!r} must be a group of one unit in the sensitivities")
        floor[b] = 0
    total = {g: len(s) for g, s in sensitivity.items()}

    def next_width(g: str, n: int) -> int:
        """The next multiple of round_to below n, not under the group's floor."""
        if g in blocks:
            return 0
        return max(floor[g], round_to * ((n - 1) // round_to))

    def removed_value(w: Mapping[str, int]) -> float:
        return sum(float(np.sum(np.asarray(sensitivity[g], dtype=np.float64)[order[g][:total[g] - w[g]]]))
                   for g in w)

    def fit(w: dict[str, int], frozen: Collection[str] = ()) -> float:
        """Greedy removal until the budget holds (``frozen`` groups untouched), then the refill."""
        cost = _remove(w, total, order, sensitivity, latency_ms, budget_ms, latency_ms(w),
                       next_width, blocks=blocks, frozen=frozen, latency_weighting=latency_weighting)
        if cost <= budget_ms:
            cost = _refill(w, total, order, sensitivity, latency_ms, budget_ms, cost,
                           round_to=round_to, blocks=blocks, latency_weighting=latency_weighting)
        return cost

    current = fit(widths)
    if current <= budget_ms:
        # Greedy removal of whole blocks can overshoot by more than any refill step can give
        # back (two large blocks and one small one would do; greedy took three large ones).
        # Exchange: give one removed block back, let the others make up its time; keep the
        # result when it removes less sensitivity and still meets the budget.
        improved = True
        while improved:
            improved, now = False, removed_value(widths)
            for b in sorted(g for g in blocks if widths[g] == 0):
                trial = {**widths, b: 1}
                cost = fit(trial, frozen=(b,))
                if cost <= budget_ms and removed_value(trial) < now - 1e-12:
                    widths.update(trial)
                    current, improved = cost, True
                    break
    keep = {g: np.sort(order[g][len(sensitivity[g]) - widths[g]:]) for g in sensitivity}
    return Selection(keep, widths, current, current <= budget_ms)


def _remove(widths: dict[str, int], total: Mapping[str, int], order: Mapping[str, np.ndarray],
            sensitivity: Mapping[str, np.ndarray], latency_ms: Callable[[Mapping[str, int]], float],
            budget_ms: float, current: float, next_width: Callable[[str, int], int], *,
            blocks: Collection[str], frozen: Collection[str], latency_weighting: bool) -> float:
    """Greedy removal (``widths`` shrinks in place) until ``current <= budget_ms`` or nothing
    is left that saves time; ``frozen`` groups are not touched. Returns the new cost."""
    while current > budget_ms:
        best, best_key, best_ms, best_m = None, None, None, None
        for g in sorted(widths):
            if g in frozen:
                continue
            n = m = widths[g]
            # the next least sensitive block; with latency weighting, while the blocks taken so
            # far save nothing (a flat stretch of the latency table), look one block further
            while True:
                m_next = next_width(g, m)
                if m_next >= m:
                    break  # at its floor
                m = m_next
                removed = order[g][total[g] - n: total[g] - m]
                value = float(np.sum(np.asarray(sensitivity[g], dtype=np.float64)[removed]))
                ms = latency_ms({**widths, g: m})
                saved = current - ms
                if not latency_weighting:
                    key = value
                    break
                key = value / saved if saved > 0 else np.inf
                if saved > 0:
                    break
            if m >= n:
                continue
            if best_key is None or key < best_key:
                best, best_key, best_ms, best_m = g, key, ms, m
        if best is None or best_key == np.inf:
            break  # nothing left to remove, or nothing that saves time
        widths[best] = best_m
        current = best_ms
    return current


def _refill(widths: dict[str, int], total: Mapping[str, int], order: Mapping[str, np.ndarray],
            sensitivity: Mapping[str, np.ndarray], latency_ms: Callable[[Mapping[str, int]], float],
            budget_ms: float, current: float, *, round_to: int, blocks: Collection[str],
            latency_weighting: bool) -> float:
    """Give back removed channels (``widths`` grows in place) while the budget holds: each
    time the step (up to the next multiple of round_to, or a whole block) with the most
    sensitivity per millisecond it adds; a step that adds nothing is taken first. Returns
    the new cost."""
    while True:
        best, best_key, best_ms, best_m = None, None, None, None
        for g in sorted(widths):
            n = widths[g]
            if n >= total[g]:
                continue
            m = 1 if g in blocks else min(total[g], round_to * (n // round_to + 1))
            ms = latency_ms({**widths, g: m})
            if ms > budget_ms:
                continue
            back = order[g][total[g] - m: total[g] - n]
            value = float(np.sum(np.asarray(sensitivity[g], dtype=np.float64)[back]))
            extra = ms - current
            key = (extra <= 0, value / extra if latency_weighting and extra > 0 else value)
            if best_key is None or key > best_key:
                best, best_key, best_ms, best_m = g, key, ms, m
        if best is None:
            return current
        widths[best] = best_m
        current = best_ms
