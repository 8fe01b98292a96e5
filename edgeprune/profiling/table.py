"""One latency table: a layer signature's latency over a grid of (c_in, c_out) widths."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edgeprune.errors import ProfileError


def axis_grid(full: Iterable[int], fixed: Iterable[int], *, round_to: int, max_points: int,
              thin: int = 0) -> tuple[int, ...]:
    """Grid of widths for one axis.

    ``full``: widths this axis takes at full size in prunable layers; their grid runs from
    ``round_to`` to the largest in steps of ``round_to``, thinned evenly to ``max_points`` (ends
    kept). ``fixed``: widths of layers that never change (the model's input channels, the
    classifier's outputs); they are measured exactly. ``thin`` (0 < thin < round_to): one
    width below the grid, measured too (beyond ``max_points``), so a layer pruned below
    round_to is priced from its own measurement there, not from zero channels.
    """
    full, fixed = sorted(set(full)), sorted(set(fixed))
    pts: set[int] = set(fixed)
    if full:
        hi = full[-1]
        steps = list(range(round_to, hi + 1, round_to)) or [hi]
        if len(steps) > max_points:
            idx = {round(i * (len(steps) - 1) / (max_points - 1)) for i in range(max_points)}
            steps = [steps[i] for i in sorted(idx)]
        pts |= set(steps) | set(full)
        if 0 < thin < min(round_to, hi):
            pts.add(thin)
    if not pts:
        raise ProfileError("an axis with no widths cannot be profiled")
    return tuple(sorted(pts))


# a step is "flat" when one whole round_to step changes the layer's latency by less than this
# share of it, or by less than FLAT_MS: the runtime's tiling cannot be told from noise there,
# and the width barely matters, so the probe falls back to a straight line across the step
FLAT_SHARE = 0.1
FLAT_MS = 0.002
# a staircase that misses the measured shares by more than half a step (rms) does not describe
# the runtime: ONNX Runtime takes a slower path for input channels that are not a multiple of
# 4 (in one probe on this project's host 33 channels cost 1.8 steps, 36 cost 0.6), which no
# staircase fits
IRREGULAR_RMS = 0.5
# nor does one that misses any single width by more than half a step: ONNX Runtime on an
# AVX-512 host (resnet20's probe, 32..48 input channels) paid about one step at 36, 40 and 44
# channels and 1-2.2 steps at every other width; a 4-tile staircase fitted that at rms 0.33 but
# priced 44 channels at 1.72 steps (measured: 1.07), and variants over-predicted by up to 62%
IRREGULAR_MAX = 0.5
# a larger tile must cut the staircase's squared error to below this share of the best so far
STEP_EVIDENCE = 0.5


def fit_step(base_ms: float, offset_ms: Sequence[float], next_ms: float) -> dict[str, Any]:
    """How a runtime's latency climbs over one ``round_to`` step of channels, from a layer
    timed at a grid width ``b`` (``base_ms``), at ``b + d`` for every ``d`` in 1..round_to-1
    (``offset_ms``) and at ``b + round_to`` (``next_ms``).

    The measured share of the step's rise paid at ``b + d`` is ``m[d] = (L(b+d) - L(b)) /
    (L(b+round_to) - L(b))``. A runtime that computes channels in tiles of ``s`` pays
    ``ceil(d / s) * s / round_to`` of it; one that switches to a narrower, slower kernel for a
    small remainder pays more (in one sweep on this project's AVX2 host XNNPACK's 3x3 conv at
    33-40 output channels cost more than at 48). The model is that staircase times a height ``h >= 1``
    (a width cannot cost less than the tiles it fills; a lower fit is timing noise): for each
    divisor ``s`` of round_to, ``h`` is fitted by least squares to all offsets at once
    (single points are too noisy to use one by one). Going from the smallest ``s`` up, a
    larger tile is taken only when it cuts the squared error to under :data:`STEP_EVIDENCE`
    of the best so far: a noisy straight line must not be read as a staircase (on this
    project's host one probe of a conv's input channels fitted a 16-tile staircase as well as
    a line, and doubled every off-grid prediction).

    ``share`` (round_to + 1 numbers, ``share[0] = 0`` and ``share[round_to] = 1``: the grid
    widths are measured) is the fitted staircase; when even the best staircase misses by more
    than :data:`IRREGULAR_RMS`, or misses one width by more than :data:`IRREGULAR_MAX`, the step
    is ``irregular`` and ``share`` is the measured share of each width (negative noise clipped to
    0); a flat step (see :data:`FLAT_SHARE`) gives the
    straight line ``d / round_to``.

    The times are rounded to 1 ns first, as a profile stores them (``measured_ms``), so a
    profile refitted from its file gets exactly the fit it was built with."""
    base_ms, next_ms = round(base_ms, 6), round(next_ms, 6)
    offset_ms = [round(v, 6) for v in offset_ms]
    r = len(offset_ms) + 1
    rise = next_ms - base_ms
    measured = [(v - base_ms) / rise if rise else 0.0 for v in offset_ms]
    out: dict[str, Any] = {"measured_ms": [base_ms, *offset_ms, next_ms],
                           "measured_share": [round(v, 4) for v in measured]}
    if rise <= max(FLAT_SHARE * max(next_ms, base_ms), FLAT_MS):
        return {**out, "flat": True, "irregular": False, "step": 1, "height": 1.0, "fit_rms": None,
                "share": [d / r for d in range(r + 1)]}
    def staircase(s: int) -> tuple[float, int, float]:
        f = [math.ceil(d / s) * s / r for d in range(1, r)]
        h = max(1.0, sum(m * x for m, x in zip(measured, f, strict=True)) / sum(x * x for x in f))
        return sum((m - h * x) ** 2 for m, x in zip(measured, f, strict=True)), s, h

    best = staircase(1)  # the straight line
    for s in (k for k in range(2, r + 1) if r % k == 0):
        fit = staircase(s)
        if fit[0] < STEP_EVIDENCE * best[0]:
            best = fit
    sse, s, h = best
    rms = math.sqrt(sse / (r - 1))
    worst = max(abs(m - h * math.ceil(d / s) * s / r) for d, m in enumerate(measured, start=1))
    if rms > IRREGULAR_RMS or worst > IRREGULAR_MAX:  # not a staircase: keep what was measured
        share = [0.0, *(round(max(0.0, m), 4) for m in measured), 1.0]
        return {**out, "flat": False, "irregular": True, "step": None, "height": None,
                "fit_rms": round(rms, 4), "share": share}
    share = [0.0, *(round(h * math.ceil(d / s) * s / r, 4) for d in range(1, r)), 1.0]
    return {**out, "flat": False, "irregular": False, "step": s, "height": round(h, 4),
            "fit_rms": round(rms, 4), "share": share}


def _off_grid(grid: Sequence[int], w: float, share: Sequence[float] | None
              ) -> list[tuple[float, float]]:
    """Widths and weights that stand for ``w`` on one axis: ``w`` itself when it was measured
    or no step is known; else the multiples of round_to around it, weighted by the share of
    the step that ``w`` pays. Below round_to the step starts from zero channels, which cost
    nothing (the tables hold a layer's own latency, the invoke overhead is subtracted), or
    from a grid width measured below round_to (``axis_grid``'s ``thin``): then ``w`` sits
    between the measured widths around it, weighted by how much of the share between them it
    pays. Measured there, a layer's cost at a few channels keeps what it pays whatever its
    width (its passes over the map, the kernel's set-up), which a share of the width at
    round_to scales away. A share outside the two (a width that cost more than round_to)
    scales the nearer one; weights are never negative, nor is a price."""
    if share is None or w in grid:
        return [(w, 1.0)]
    r = len(share) - 1
    lo = (int(w) // r) * r
    a = share[int(w) - lo]
    if lo > 0:
        return [(lo, 1.0 - a), (lo + r, a)]
    below = [g for g in grid if g < r]
    lo = max((g for g in below if g < w), default=0)
    hi = min((g for g in below if g > w), default=r)
    if lo == 0:  # a layer of no channels does no work
        return [(hi, a / share[hi])] if share[hi] > 0 else [(hi, 0.0)]
    if not share[lo] <= a <= share[hi]:
        # no mix of the two costs that (the probe timed w above the width after it: ONNX
        # Runtime's depthwise conv at 12 channels cost 1.8x its cost at 16): the measured
        # width nearer in share, scaled by the share. A line through them extrapolated a
        # table's noise by up to 6x and priced small-map layers below zero.
        n = hi if a > share[hi] else lo
        return [(n, a / share[n])]
    span = share[hi] - share[lo]
    a = (a - share[lo]) / span if span > 0 else 0.0
    return [(lo, 1.0 - a), (hi, a)]


def _bracket(grid: Sequence[int], v: float) -> tuple[int, int, float]:
    """Indices (i, j) around ``v`` and the weight of j; clamps outside the grid."""
    if v <= grid[0]:
        return 0, 0, 0.0
    if v >= grid[-1]:
        n = len(grid) - 1
        return n, n, 0.0
    j = bisect.bisect_left(grid, v)
    if grid[j] == v:
        return j, j, 0.0
    i = j - 1
    return i, j, (v - grid[i]) / (grid[j] - grid[i])


@dataclass(frozen=True)
class LayerTable:
    """``latency_ms[i][j]`` is the latency at (c_in[i], c_out[j]). A depthwise table has one
    column (its c_out equals c_in)."""

    signature: str
    kind: str
    c_in: tuple[int, ...]
    c_out: tuple[int, ...]
    latency_ms: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        rows, cols = len(self.c_in), len(self.c_out)
        if rows == 0 or cols == 0 or len(self.latency_ms) != rows or any(len(r) != cols for r in self.latency_ms):
            raise ProfileError(f"table {self.signature!r}: latency grid is not {rows} x {cols}")
        if list(self.c_in) != sorted(set(self.c_in)) or list(self.c_out) != sorted(set(self.c_out)):
            raise ProfileError(f"table {self.signature!r}: grid widths must be strictly increasing")
        for r in self.latency_ms:
            for v in r:
                if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                    raise ProfileError(f"table {self.signature!r}: latency {v!r} is not a finite "
                                       "number >= 0")

    def lookup(self, c_in: float, c_out: float, share_in: Sequence[float] | None = None,
               share_out: Sequence[float] | None = None) -> float:
        """Latency at (c_in, c_out): bilinear between grid points, clamped to the grid's edges.

        A width off the grid with a measured step ``share`` (see :func:`fit_step`; its
        length is round_to + 1) sits between the multiples of round_to around it, weighted by
        the share of the step it pays, not by its distance: latency steps at the runtime's
        tile boundaries, it does not ramp between grid points."""
        total = 0.0
        for x, wx in _off_grid(self.c_in, c_in, share_in):
            for y, wy in _off_grid(self.c_out, c_out, share_out):
                total += wx * wy * self._bilinear(x, y)
        return total

    def _bilinear(self, c_in: float, c_out: float) -> float:
        i0, i1, wi = _bracket(self.c_in, c_in)
        if self.kind == "dwconv":
            return (1 - wi) * self.latency_ms[i0][0] + wi * self.latency_ms[i1][0]
        j0, j1, wj = _bracket(self.c_out, c_out)
        g = self.latency_ms
        top = (1 - wj) * g[i0][j0] + wj * g[i0][j1]
        bottom = (1 - wj) * g[i1][j0] + wj * g[i1][j1]
        return (1 - wi) * top + wi * bottom

    def points(self) -> int:
        return len(self.c_in) * len(self.c_out)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "c_in": list(self.c_in), "c_out": list(self.c_out),
                "latency_ms": [list(r) for r in self.latency_ms]}

    @classmethod
    def from_dict(cls, signature: str, d: dict[str, Any]) -> LayerTable:
        try:
            return cls(signature, str(d["kind"]), tuple(int(v) for v in d["c_in"]),
                       tuple(int(v) for v in d["c_out"]),
                       tuple(tuple(float(v) for v in r) for r in d["latency_ms"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ProfileError(f"table {signature!r} is malformed: {e!r}") from e
