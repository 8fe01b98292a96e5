"""One latency table: a layer signature's latency over a grid of (c_in, c_out) widths."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edgeprune.errors import ProfileError


def axis_grid(full: Iterable[int], fixed: Iterable[int], *, round_to: int, max_points: int) -> tuple[int, ...]:
    """Grid of widths for one axis.

    ``full``: widths this axis takes at full size in prunable layers; their grid runs from
    ``round_to`` to the largest in steps of ``round_to``, thinned evenly to ``max_points`` (ends
    kept). ``fixed``: widths of layers that never change (the model's input channels, the
    classifier's outputs); they are measured exactly.
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
    if not pts:
        raise ProfileError("an axis with no widths cannot be profiled")
    return tuple(sorted(pts))


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

    def lookup(self, c_in: float, c_out: float) -> float:
        """Bilinear interpolation between grid points; clamped to the grid's edges."""
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
