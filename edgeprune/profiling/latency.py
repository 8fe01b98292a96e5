"""Latency profiles: per-layer tables measured on a target's runtime, plus a measured remainder.

Prediction for a model (any pruned variant of the profiled architecture):

    predicted_ms = layer_scale * (sum over the other layers of their table lookup)
                   + narrow_scale * (sum over layers whose output is pruned below round_to)
                   + remainder_intercept_ms

Layer points are single-layer models converted with edgeprune's own converters and timed on
the target's runtime, minus the runtime's per-invoke overhead (timed on a one-op model).
``layer_scale`` and ``remainder_intercept_ms`` are fitted by least squares to end-to-end
measurements of the full model and of uniformly thinned copies. The scale is how much slower
(or faster) layers run inside the network than alone: alone, a layer's weights and input stay
hot in cache between runs, and on ONNX Runtime an isolated layer also pays the layout
reorders that a network pays once. The intercept is what the tables do not hold and does not
scale with the layers: the whole model's invoke overhead, pooling, the head.

``narrow_scale`` is the same for layers whose prunable output is narrower than ``round_to``,
fitted with the calibration copy at ``round_to / 4`` channels per group (every layer narrow)
and the two that put every other group at that width and leave the rest full (narrow layers
beside wide ones, as in a pruned network); those two refit ``narrow_scale`` alone, after
intercept and ``layer_scale`` are fitted on the uniform copies (:func:`_fit_remainder`). A
runtime may run such a layer differently inside a network than alone: ONNX Runtime's NCHWc
transformer (MLAS, 16-channel blocks on AVX-512) follows every conv whose output is
narrower than a block with a reorder to plain NCHW; a grid-width network pays no reorder
between its convs. One scale for both under-priced the narrow layers (on the
AVX-512 AMD host every pruned ResNet-20 variant low, by more the more groups were below 16
channels). The layer after it, reading the narrow input, is not in the term: it takes
another kernel path (NCHW input), but its own table point was timed on that path, and in the
thin copy, where every layer is narrow on both sides, the reorders are one per layer, where a
pruned network has one per narrow output. Pricing both sides over-predicted ResNet-20 off
the grid on ONNX Runtime by up to 13.6% on variants that re-timed alike (docs/profiles.md).
A profile from before this scale reads it as ``layer_scale``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune._io import write_json
from edgeprune.agent import cpu_identity
from edgeprune.errors import ConfigError, ProfileError
from edgeprune.graph.blocks import remove_blocks, removed_under, residual_blocks
from edgeprune.graph.layers import LayerUnit, layer_units
from edgeprune.profiling.measurement import (
    SpreadTiming,
    check_measurable,
    convert_for,
    time_artifacts,
    time_rounds,
)
from edgeprune.profiling.table import LayerTable, axis_grid, fit_step
from edgeprune.targets import ARTIFACT_SUFFIX, Target, load_target
from edgeprune.types import Progress

SCHEMA_VERSION = 2  # 2: layer_scale replaced the per-activation-element remainder slope
FORMAT = "edgeprune-latency-profile"
CALIBRATION_KEEP = (1.0, 0.6, 0.3)
# a model with removable residual blocks gets one more calibration: the 0.3 copy with every
# block removed, so the fit has seen the networks the pruner makes below the channel floor;
# and every model one at round_to / THIN_DIV channels per group (4 of 16), the width each
# table also measures below its grid: a model thinned to 4-20 channels (another tool's, a
# user's) came out 25% low on LiteRT without them (docs/profiles.md, small models)
THIN_DIV = 4
# the calibrations' passes run in this many rounds spread over the build (see _profile)
CALIBRATION_ROUNDS = 3


def _thin_width(round_to: int) -> int:
    """The width below the grid that every table and the thinnest calibration measure."""
    return max(1, round_to // THIN_DIV)


def host_identity() -> dict[str, Any]:
    """This machine as a profile records it: CPU model name, id and kernel instruction sets
    (:func:`edgeprune.agent.cpu_identity`), cores, architecture, OS, hostname."""
    return dict(_host_identity())


@functools.lru_cache(maxsize=1)
def _host_identity() -> dict[str, Any]:
    return {**cpu_identity(), "cores": os.cpu_count(), "machine": platform.machine(),
            "system": platform.system(), "hostname": platform.node()}


def runtime_version(runtime: str) -> str:
    if runtime == "litert":
        import ai_edge_litert

        return str(getattr(ai_edge_litert, "__version__", "unknown"))
    if runtime == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    return "n/a"


@dataclass(frozen=True)
class LatencyProfile:
    target: Target
    runtime_version: str
    host: dict[str, Any]
    architecture: str | None
    input_shape: tuple[int, int, int]
    tables: dict[str, LayerTable]
    layers: dict[str, str]  # module path -> signature, for the profiled architecture
    overhead_ms: float
    remainder_intercept_ms: float
    layer_scale: float
    calibration: tuple[dict[str, float], ...] = ()
    build_s: float = 0.0
    created: str = ""
    edgeprune_version: str = ""
    source: str = "measured"  # "measured" or "estimate"
    build: dict[str, Any] = dataclasses.field(default_factory=dict)  # time split, cache use
    # how latency climbs over one round_to step, per kind of layer and kernel and per axis,
    # with the probe that measured it ({"conv:k1x1": {axis: fit_step(...) + where}}; keyed by
    # kind alone in files before 2026-12-07); None: a file from before steps were measured
    steps: dict[str, dict[str, dict[str, Any]]] | None = None
    # layer_scale for layers pruned below round_to (module docstring); None: layer_scale (a
    # profile from before it was fitted)
    narrow_scale: float | None = None

    # ---- prediction ---------------------------------------------------------------------

    def units(self, model: nn.Module) -> list[LayerUnit]:
        """The model's layers, checked against the profiled architecture (a layer may be
        missing only inside a residual block that pruning replaced by an identity)."""
        units = layer_units(model, self.input_shape)
        paths = {u.path for u in units}
        expected = {p for p in self.layers if p in paths or not removed_under(model, p)}
        if paths != expected:
            extra, missing = sorted(paths - expected), sorted(expected - paths)
            raise ProfileError(
                f"model does not match the profiled architecture {self.architecture!r}: layers "
                f"not in the profile {extra[:3]}, profiled layers missing {missing[:3]}; "
                "profile this architecture"
            )
        for u in units:
            if u.signature != self.layers[u.path]:
                raise ProfileError(f"layer {u.path!r} has signature {u.signature!r} but the profile "
                                   f"measured {self.layers[u.path]!r}; profile this architecture")
        return units

    def layer_ms(self, unit: LayerUnit, c_in: int | None = None, c_out: int | None = None) -> float:
        """Table latency of ``unit`` at widths (c_in, c_out) (default: the unit's own)."""
        table = self.tables.get(unit.signature)
        if table is None:
            raise ProfileError(f"no table for layer {unit.path!r} ({unit.signature})")
        c_in = unit.c_in if c_in is None else c_in
        c_out = unit.c_out if c_out is None else c_out
        return table.lookup(c_in, c_out, self._share(unit, table, "c_in", c_in),
                            self._share(unit, table, "c_out", c_out))

    def _share(self, unit: LayerUnit, table: LayerTable, axis: str, width: int) -> list[float] | None:
        """The measured step on ``axis`` for ``unit``'s kind and kernel (None: not needed). A
        width off the grid (not measured, not a multiple of round_to) needs one: without it the
        prediction would interpolate across a latency step, so it is refused. A width below
        round_to takes the first step's own probe (from zero channels): runtimes use other
        kernels for a few channels than past a full tile. A profile from before steps were
        measured per kernel keys them by kind alone, and prices every kernel with that probe."""
        if table.kind == "dwconv" and axis == "c_out":
            return None  # a depthwise layer's c_out is its c_in
        grid = table.c_in if axis == "c_in" else table.c_out
        r = self.target.round_to
        if width in grid or width % r == 0:
            return None
        key = _step_key(unit)
        if self.steps is not None and key not in self.steps and table.kind in self.steps:
            key = table.kind  # a file keyed by kind
        st = (self.steps or {}).get(key, {}).get(axis, {})
        if width < r:
            st = st.get("first", {})
        share = st.get("share")
        if share is not None:
            return share
        if self.steps is None:
            why = "was made before edgeprune measured channel steps"
        elif not self.steps.get(key, {}).get(axis):
            why = (f"has no measured step for the {axis} of {key} layers (every profiled "
                   "layer had it fixed)")
        else:
            why = f"was made before edgeprune measured the first step (1..{r - 1} channels)"
        raise ProfileError(
            f"layer {unit.path!r} has {axis}={width}, off the profile's {r}-"
            f"channel grid, and the profile {why}, so it cannot say how {self.target.runtime}'s "
            "latency steps between grid widths; re-profile with this edgeprune")

    def predict_units(self, units: Sequence[LayerUnit],
                      widths: dict[str, tuple[int, int]] | None = None) -> float:
        """Predicted latency for layer units, optionally at other widths {path: (c_in, c_out)};
        a layer at (0, 0) belongs to a removed residual block and costs nothing (the block's
        add stays in the remainder: the prediction is conservative by that much)."""
        widths = widths or {}
        total = 0.0
        for u in units:
            ci, co = widths.get(u.path, (u.c_in, u.c_out))
            if ci and co:
                total += self._scale(u, co) * self.layer_ms(u, ci, co)
        return total + self.remainder_intercept_ms

    @property
    def _narrow_scale(self) -> float:
        return self.layer_scale if self.narrow_scale is None else self.narrow_scale

    def _scale(self, unit: LayerUnit, c_out: int) -> float:
        """The scale of ``unit`` at output width ``c_out``: ``narrow_scale`` for a prunable
        output below round_to, else ``layer_scale``."""
        return self._narrow_scale if _narrow(unit, c_out, self.target.round_to) else self.layer_scale

    def predict_ms(self, model: nn.Module) -> float:
        """Predicted latency of ``model`` (widths read from its layers) on the target."""
        return self.predict_units(self.units(model))

    def breakdown(self, model: nn.Module) -> dict[str, float]:
        """Each layer's share of the prediction (its table latency times ``layer_scale``, or
        ``narrow_scale`` for an output below round_to) and the intercept as ``"(remainder)"`` (it can be
        negative: see the module docstring)."""
        out = {u.path: self._scale(u, u.c_out) * self.layer_ms(u) for u in self.units(model)}
        out["(remainder)"] = self.remainder_intercept_ms
        return out

    def __str__(self) -> str:
        lines = [f"latency profile: {self.architecture} on {self.target.name} "
                 f"({self.target.runtime} {self.runtime_version}, {self.target.threads} thread(s), "
                 f"{self.source})",
                 f"  host {self.host.get('cpu')} x{self.host.get('cores')}, built in {self.build_s:.0f} s"
                 + (f" (converting {self.build['convert_s']:.0f} s, measuring {self.build['measure_s']:.0f} s; "
                    f"{self.build['points_from_layer_cache']} layer points from the cache, "
                    f"{self.build.get('points_derived', 0)} derived)"
                    if "convert_s" in self.build else ""),
                 f"  {len(self.tables)} tables, {sum(t.points() for t in self.tables.values())} "
                 f"points, invoke overhead {self.overhead_ms:.4f} ms",
                 f"  layers x {self.layer_scale:.4f} in the network (below {self.target.round_to} "
                 f"channels x {self._narrow_scale:.4f}), remainder {self.remainder_intercept_ms:+.4f} ms"]
        if self.steps is not None:
            lines.append("  channel steps: " + "; ".join(
                f"{kind} {axis} {_step_str(st)}"
                + (f" (first {_step_str(st['first'])})" if "first" in st else "")
                for kind, axes in sorted(self.steps.items()) for axis, st in sorted(axes.items())))
        for c in self.calibration:
            lines.append(f"  calibration {_calib_name(c['keep'], c.get('width'), c.get('alternate'))}"
                         + (f", {c['blocks_removed']} blocks removed" if c.get("blocks_removed") else "")
                         + f": measured {c['measured_ms']:.3f} ms, predicted {c['predicted_ms']:.3f} ms")
        return "\n".join(lines)

    # ---- files --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "source": self.source,
            "target": self.target.to_dict(),
            "runtime": self.target.runtime,
            "precision": self.target.precision,
            "runtime_version": self.runtime_version,
            "host": self.host,
            "created": self.created,
            "edgeprune_version": self.edgeprune_version,
            "protocol": {"warmup": self.target.measure.warmup, "runs": self.target.measure.runs,
                         "passes": self.target.measure.passes,
                         "pass_interval_s": self.target.measure.pass_interval_s,
                         "statistic": "median of the fastest pass", "threads": self.target.threads},
            "architecture": self.architecture,
            "input_shape": list(self.input_shape),
            "build_s": round(self.build_s, 2),
            "build": self.build,
            "overhead_ms": self.overhead_ms,
            "remainder": {"intercept_ms": self.remainder_intercept_ms,
                          "layer_scale": self.layer_scale,
                          **({} if self.narrow_scale is None else {"narrow_scale": self.narrow_scale})},
            "calibration": list(self.calibration),
            "layers": self.layers,
            "tables": {s: t.to_dict() for s, t in sorted(self.tables.items())},
            **({} if self.steps is None else {"steps": self.steps}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "profile") -> LatencyProfile:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ProfileError(f"{where} is not an edgeprune latency profile (format "
                               f"{d.get('format') if isinstance(d, dict) else None!r})")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ProfileError(f"{where} has schema_version {d.get('schema_version')!r}; this "
                               f"edgeprune reads {SCHEMA_VERSION}; re-profile with this version")
        if d.get("source") not in ("measured", "estimate"):
            raise ProfileError(f"{where}: source {d.get('source')!r} must be 'measured' or 'estimate'")
        try:
            # profiles written before the target's unused [tolerance] table was removed carry it
            target = Target.from_dict({k: v for k, v in d["target"].items() if k != "tolerance"})
            tables = {s: LayerTable.from_dict(s, t) for s, t in d["tables"].items()}
            layers = {str(k): str(v) for k, v in d["layers"].items()}
            missing = sorted(set(layers.values()) - set(tables))
            if missing:
                raise ProfileError(f"{where}: layers refer to tables it lacks: {missing[:3]}")
            return cls(
                target=target, runtime_version=str(d["runtime_version"]), host=dict(d["host"]),
                architecture=d.get("architecture"),
                input_shape=tuple(int(v) for v in d["input_shape"]), tables=tables, layers=layers,
                overhead_ms=float(d["overhead_ms"]),
                remainder_intercept_ms=float(d["remainder"]["intercept_ms"]),
                layer_scale=float(d["remainder"]["layer_scale"]),
                narrow_scale=(None if d["remainder"].get("narrow_scale") is None
                              else float(d["remainder"]["narrow_scale"])),
                calibration=tuple(dict(c) for c in d.get("calibration", ())),
                build_s=float(d.get("build_s", 0.0)), created=str(d.get("created", "")),
                edgeprune_version=str(d.get("edgeprune_version", "")), source=d["source"],
                build=dict(d.get("build", {})), steps=_read_steps(d.get("steps"), target.round_to, where),
            )
        except ProfileError:
            raise
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise ProfileError(f"{where} is malformed: {type(e).__name__}: {e}") from e

    def save(self, path: str | os.PathLike) -> Path:
        return write_json(path, self.to_dict())

    def check_host(self, *, where: str = "the profile") -> None:
        """Raise :class:`ProfileError` unless this profile can describe this machine.

        A measured profile of a local (``host-*``) target describes only the machine that
        measured it: its CPU model name, CPU id, kernel instruction sets (two hosts sold as one
        model name can differ several-fold in int8) and runtime version must be this host's.
        A profile that records no CPU id or instruction sets is refused too. Profiles of
        device targets (measured on the device) and estimates are not tied to this host."""
        if not (self.target.is_local and self.source == "measured" and not self.target.is_analytical):
            return
        here = host_identity()
        fix = (f"re-profile on this machine (edgeprune profile --target {self.target.name} --model "
               "MODEL --out FILE), or give no profile and one is measured now")
        if "isa" not in self.host or "cpu_id" not in self.host:
            raise ProfileError(
                f"{where} records no CPU id or instruction sets (written before edgeprune recorded "
                f"them), so it cannot be shown to describe this host ({here['cpu']!r}, "
                f"{here['cpu_id']}); CPUs that share a model name can differ several-fold; {fix}")
        differ = [f"{what} {self.host.get(k)!r} there, {here[k]!r} here"
                  for k, what in (("cpu", "CPU"), ("machine", "machine"), ("cpu_id", "CPU id"))
                  if self.host.get(k) != here[k]]
        theirs, mine = set(self.host.get("isa") or ()), set(here["isa"])
        if theirs != mine:
            differ.append("instruction sets differ (only there: "
                          f"{' '.join(sorted(theirs - mine)) or '-'}, only here: "
                          f"{' '.join(sorted(mine - theirs)) or '-'})")
        if differ:
            raise ProfileError(
                f"{where} was measured on another machine ({', '.join(differ)}); a "
                f"{self.target.name} profile describes only the machine that measured it; {fix}")
        have = runtime_version(self.target.runtime)
        if have != self.runtime_version:
            raise ProfileError(f"{where} was measured with {self.target.runtime} "
                               f"{self.runtime_version}, but {have} is installed; {fix}")

    @classmethod
    def load(cls, path: str | os.PathLike, *, target: str | Target | None = None,
             check_host: bool = True) -> LatencyProfile:
        """Read a profile file. With ``target``, refuse a profile of another target; with
        ``check_host`` (default), refuse a local target's profile measured on another machine
        or with another runtime version (see :meth:`check_host`). ``check_host=False`` reads
        any profile as a record, e.g. to compare machines; never predict with one."""
        p = Path(path)
        if not p.is_file():
            raise ProfileError(f"profile {str(p)!r} does not exist")
        try:
            d = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProfileError(f"profile {str(p)!r} is not valid JSON: {e}") from e
        prof = cls.from_dict(d, where=f"profile {str(p)!r}")
        if target is not None:
            t = load_target(target)
            if t.name != prof.target.name:
                raise ProfileError(f"profile {str(p)!r} was measured for target {prof.target.name!r}, "
                                   f"not {t.name!r}")
        if check_host:
            prof.check_host(where=f"profile {str(p)!r}")
        return prof


def _calib_name(keep: float | None, width: int | None, alternate: int | None = None) -> str:
    if alternate is not None:
        return f"{width} channels in every other group ({'odd' if alternate else 'even'}), the rest full"
    return f"{width} channels per group" if keep is None else f"keep {keep:.2f}"


def _step_str(st: dict[str, Any]) -> str:
    kind = "flat" if st.get("flat") else "irregular" if st.get("irregular") else str(st.get("step"))
    return kind + (f" x{st['height']:.2f}" if st.get("height") not in (None, 1.0) else "")


def _read_steps(d: Any, round_to: int, where: str) -> dict[str, dict[str, dict[str, Any]]] | None:
    if d is None:
        return None
    try:
        steps = {str(k): {str(a): dict(v) for a, v in axes.items()} for k, axes in d.items()}
        for kind, axes in steps.items():
            for axis, v in axes.items():
                if axis not in ("c_in", "c_out"):
                    raise ValueError(f"steps.{kind}.{axis}: the axis must be c_in or c_out")
                _read_share(v, round_to, f"steps.{kind}.{axis}")
                if "first" in v:
                    v["first"] = dict(v["first"])
                    _read_share(v["first"], round_to, f"steps.{kind}.{axis}.first")
        return steps
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ProfileError(f"{where}: steps are malformed: {e}") from e


def _read_share(v: dict[str, Any], round_to: int, where: str) -> None:
    """Check one fitted step read from a file and refit it from its probe (``measured_ms``):
    the fit is derived from the probe, so a file keeps no staircase this edgeprune's
    :func:`fit_step` no longer accepts."""
    share = v["share"]
    if (not isinstance(share, list) or len(share) != round_to + 1 or share[0] != 0 or share[-1] != 1
            or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in share)):
        raise ValueError(f"{where}: need a share list of round_to + 1 = {round_to + 1} finite "
                         "numbers from 0 (first) to 1 (last)")
    v["share"] = [float(x) for x in share]
    ms = v.get("measured_ms")
    if isinstance(ms, list) and len(ms) == round_to + 1:
        ms = [float(x) for x in ms]
        v.update(fit_step(ms[0], ms[1:-1], ms[-1]))


def _step_key(u: LayerUnit) -> str:
    """What a channel step is measured per: the kind of layer and, for a conv, its kernel
    (``conv:k1x1``). Runtimes take other paths for other kernels: on ONNX Runtime (AVX-512
    AMD host) a 1x1 conv reading 8 or 12 channels cost 1.4-1.7x what the 3x3 probe's first
    step priced it at (slower than at 16 channels), where a 3x3 conv steps about linearly."""
    return u.kind if u.kind == "linear" else f"{u.kind}:k{u.kernel[0]}x{u.kernel[1]}"


def _probe_plan(units: Sequence[LayerUnit], round_to: int) -> dict[tuple[str, str], _Probe]:
    """Where to measure how latency steps, per kind of layer and kernel (:func:`_step_key`) and
    prunable axis: the layer of that key with the most work per channel pair (its geometry),
    timed at a grid width ``b = 2 x round_to``, at every width up to ``b + round_to``; the
    other axis at ``b`` (a classifier keeps its fixed class count). And the first step, at
    every width from 1 to round_to: below one full tile a runtime may take other kernels (on
    this project's AVX2 host XNNPACK's 3x3 conv costs about 0.6 of 16 output channels at 1-8
    of them, and 1.2 at 9-15), so the step past ``b`` does not describe it."""
    b = 2 * round_to
    by_key: dict[str, list[LayerUnit]] = defaultdict(list)
    for u in units:
        by_key[_step_key(u)].append(u)
    plan = {}
    for key, us in sorted(by_key.items()):
        kind = us[0].kind
        for axis in (("c_in",) if kind == "dwconv" else ("c_in", "c_out")):
            cand = [u for u in us if not (u.fixed_in if axis == "c_in" else u.fixed_out)]
            if not cand:
                continue
            u = max(cand, key=lambda u: u.out_hw[0] * u.out_hw[1] * u.kernel[0] * u.kernel[1])
            if kind == "dwconv":
                other = 0  # its c_out follows c_in
            elif axis == "c_in":
                other = u.c_out if u.fixed_out else b
            else:
                other = u.c_in if u.fixed_in and kind == "linear" else b

            def at(w: int, axis: str = axis, other: int = other) -> tuple[int, int]:
                return (w, other) if axis == "c_in" else (other, w)

            plan[(key, axis)] = _Probe(u, [at(w) for w in range(b, b + round_to + 1)],
                                        [at(w) for w in range(1, round_to + 1)])
    return plan


def _fit_steps(probes: dict[tuple[str, str], _Probe],
               points: dict[tuple[str, int, int], float]) -> dict[str, dict[str, dict[str, Any]]]:
    steps: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (key, axis), p in probes.items():
        def width(pt: tuple[int, int], axis: str = axis) -> int:
            return pt[0] if axis == "c_in" else pt[1]

        ms = [points[(p.unit.signature, ci, co)] for ci, co in p.step]
        first = [points[(p.unit.signature, ci, co)] for ci, co in p.first]
        steps[key][axis] = {
            "signature": p.unit.signature, "widths": [width(pt) for pt in p.step],
            "other_width": None if p.unit.kind == "dwconv" else p.step[0][1] if axis == "c_in" else p.step[0][0],
            **fit_step(ms[0], ms[1:-1], ms[-1]),
            # from zero channels (which cost nothing: the tables hold a layer's own time)
            "first": {"widths": [0, *(width(pt) for pt in p.first)], **fit_step(0.0, first[:-1], first[-1])}}
    return dict(steps)


def _points_needed(units: Sequence[LayerUnit], round_to: int, max_points: int
                   ) -> dict[str, tuple[LayerUnit, tuple[int, ...], tuple[int, ...]]]:
    by_sig: dict[str, list[LayerUnit]] = defaultdict(list)
    for u in units:
        by_sig[u.signature].append(u)
    plan = {}
    thin = _thin_width(round_to)
    for sig, us in by_sig.items():
        # a linear head's c_in is flattened features; its cost is linear in them, so the
        # thinned grid with interpolation covers any channel count
        c_in = axis_grid([u.c_in for u in us if not u.fixed_in], [u.c_in for u in us if u.fixed_in],
                         round_to=round_to, max_points=max_points, thin=thin)
        if us[0].kind == "dwconv":
            c_out: tuple[int, ...] = (0,)
        else:
            c_out = axis_grid([u.c_out for u in us if not u.fixed_out],
                              [u.c_out for u in us if u.fixed_out], round_to=round_to,
                              max_points=max_points, thin=thin)
        plan[sig] = (us[0], c_in, c_out)
    return plan


def profile(model: nn.Module, target: str | Target, *, input_shape: tuple[int, int, int] | None = None,
            max_points: int = 8, cache: LatencyProfile | None = None, workers: int | None = None,
            layer_cache: str | os.PathLike | bool = True,
            on_progress: Callable[[Progress], None] | None = None) -> LatencyProfile:
    """Measure a latency profile of ``model``'s architecture on ``target`` (model unchanged).

    ``max_points`` caps the grid points per width axis (ends always measured; bilinear
    interpolation between). ``cache``: an earlier profile of the same target, runtime version
    and host whose measured points are reused, so re-profiling is incremental. ``workers``:
    processes converting single-layer models (default: 2 for LiteRT, whose converter is
    slow, else 1); timing is always sequential. ``layer_cache``: where converted single-layer
    models are kept and reused (True: ``$EDGEPRUNE_LAYER_CACHE`` or
    ``~/.cache/edgeprune/layer-models``; a path; False: convert everything, keep nothing; see
    :mod:`edgeprune.profiling.cache`); the end-to-end calibration networks are kept there too,
    so re-profiling a model converts nothing (``build["calibrations_from_cache"]``). On
    LiteRT most single-layer models are derived from one converted template per signature,
    after a check against real conversions (:func:`_make_points`). A device target is timed on the device through its agent, and
    the agent's ``info`` is the profile's ``host``.
    """
    from edgeprune.profiling.cache import LayerCache, default_dir

    t = load_target(target)
    check_measurable(t)
    if max_points < 2:
        raise ConfigError(f"max_points={max_points} is invalid; need at least 2 (both ends)")
    if workers is None:  # litert-torch takes ~1.5 s per layer; the ONNX tracer ~0.05 s
        workers = min(2, os.cpu_count() or 1) if t.runtime == "litert" else 1
    if workers < 1:
        raise ConfigError(f"workers={workers} is invalid; need at least 1")
    shape = tuple(input_shape or _input_shape(model))
    if len(shape) != 3:
        raise ConfigError(f"input_shape {shape} is invalid; give (C, H, W)")
    lcache = None if layer_cache is False else LayerCache(
        default_dir() if layer_cache is True else layer_cache)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    device = None
    if t.is_device:  # measured on the device: its agent's info is the profile's provenance
        from edgeprune.runtimes.device import connect

        device = connect(t)
        version, host = device.runtime_version(t.runtime), device.info()
    else:
        version, host = runtime_version(t.runtime), host_identity()
    try:
        return _profile(model, t, shape, max_points, cache, workers, on_progress, t0, version, host,
                        device, lcache)
    finally:
        if device is not None:
            device.close()


def _profile(model: nn.Module, t: Target, shape: tuple[int, ...], max_points: int,
             cache: LatencyProfile | None, workers: int, on_progress, t0: float, version: str,
             host: dict[str, Any], device, lcache) -> LatencyProfile:
    from edgeprune._version import __version__
    from edgeprune.graph import group_structure
    from edgeprune.profiling.cache import network_key

    cached = _cache_points(cache, t, version, host)
    units = layer_units(model, shape)  # the caller's model is only read
    plan = _points_needed(units, t.round_to, max_points)
    todo = [(sig, unit, ci, co) for sig, (unit, c_in, c_out) in plan.items()
            for ci in c_in for co in c_out if (sig, ci, co) not in cached]
    # the step probes are timed in this build, side by side, never taken from an earlier profile
    probes = _probe_plan(units, t.round_to)
    queued = {(sig, ci, co) for sig, _, ci, co in todo}
    for p in probes.values():
        for ci, co in p.points():
            if (p.unit.signature, ci, co) not in queued:
                queued.add((p.unit.signature, ci, co))
                todo.append((p.unit.signature, p.unit, ci, co))
    # points converted before (by any model, for any target of this runtime and precision)
    hits = {} if lcache is None else {
        (sig, ci, co): p for sig, _, ci, co in todo if (p := lcache.get(sig, ci, co, t)) is not None}
    to_convert = [job for job in todo if (job[0], job[2], job[3]) not in hits]
    convert_s = measure_s = 0.0
    passes = t.measure.passes
    example = torch.zeros(1, *shape)
    blocks = tuple(b.name for b in residual_blocks(model, example))
    thin = _thin_width(t.round_to)
    groups = group_structure(model, example)
    # (keep, width, blocks removed, alternate): keep None is every group at `width` channels,
    # or with `alternate` 0 / 1 the even / odd groups (in group order), the others full
    calibrations: list[tuple[float | None, int | None, tuple[str, ...], int | None]] = [
        (keep, None, (), None) for keep in CALIBRATION_KEEP]
    if blocks:
        calibrations.append((CALIBRATION_KEEP[-1], None, blocks, None))
    # the channel floor (every group at round_to), where the thinnest keep does not reach it
    # (VGG-Small, MobileNetV2): a small grid-width network, so the intercept is not drawn from
    # wide copies alone (without it VGG-Small's floor network was predicted below zero)
    if _calib_widths(groups, CALIBRATION_KEEP[-1], None, t.round_to) != \
            _calib_widths(groups, None, t.round_to, t.round_to):
        calibrations.append((None, t.round_to, (), None))
    calibrations.append((None, thin, (), None))
    # narrow layers beside full ones, as a pruned network has them: fitted on the thin copy
    # alone (every layer narrow), narrow_scale over-priced them there (ONNX Runtime
    # MobileNetV2 pruned to 4-20 channels: 60% within 10%, median +9.8%; docs/profiles.md)
    if len(groups) > 1:
        calibrations += [(None, thin, (), a) for a in (0, 1)]
    n_calib = len(calibrations)
    n_twins = len(_derivable(to_convert, t))  # one derived twin per derived signature is timed
    probe_keys = sorted({(p.unit.signature, ci, co) for p in probes.values() for ci, co in p.points()})
    total = 1 + _conversions_planned(to_convert, t, lcache) + passes * (1 + len(todo) + n_twins) \
        + (PROBE_ROUNDS - 1) * passes * (1 + len(probe_keys)) + n_calib * (1 + passes)
    step = 0

    def tick(what: str) -> None:
        nonlocal step
        step += 1
        if on_progress is not None:
            on_progress(Progress("profile", step, total, {"measuring": what}))

    with tempfile.TemporaryDirectory(prefix="edgeprune-profile-") as d:
        suffix = ARTIFACT_SUFFIX[t.runtime]
        # the runtime's per-invoke overhead: a model of one tiny op (a 1x1 conv on a 2x2 map)
        probe = Path(d) / f"overhead{suffix}"
        c0 = time.perf_counter()
        convert_for(nn.Conv2d(8, 8, 1, bias=False), t, probe, torch.zeros(1, 8, 2, 2), fast=True)
        tick("convert invoke-overhead probe")

        # convert (or derive) every missing point and every calibration network first (points
        # in parallel), then time: no conversion runs beside a timed run
        made = _make_points(to_convert, t, Path(d), workers, lcache, tick)
        total += len(made.twins) - n_twins  # a signature whose check failed has no twin
        paths = made.paths
        if lcache is not None:
            paths = {k: lcache.put(*k, t, p) for k, p in paths.items()}
        paths.update(hits)
        # scales and intercept: end-to-end measurements of the full model, thinned copies,
        # (a model with residual blocks) the thinnest copy without its blocks, the copy at the
        # channel floor (where keep 0.3 is wider), the one at round_to / 4 and the two with
        # every other group at round_to / 4
        variants, calib_paths, calib_cached = [], [], 0
        for i, (keep, width, removed, alternate) in enumerate(calibrations):
            variant = calib_network(model, example, groups, t.round_to, keep, width, removed, alternate)
            variants.append(variant)
            # the same network converted before (a re-profile): its file, else convert and keep it
            key = None if lcache is None else network_key(variant, shape)
            hit = None if key is None else lcache.get_network(key, t)
            if hit is not None:
                calib_cached += 1
                calib_paths.append(hit)
            else:
                path = convert_for(variant, t, Path(d) / f"full{i}{suffix}", example)
                calib_paths.append(path if key is None else lcache.put_network(key, t, path))
            tick(f"convert end-to-end {_calib_name(keep, width, alternate)}"
                 + (f", {len(removed)} blocks removed" if removed else ""))
        convert_s += time.perf_counter() - c0
        # the calibrations are timed on their own, among networks, as a benchmark or a user
        # times a network: timed in the points' passes (each after a large single-layer model),
        # a 15 us user_net copy measured 22% slower than alone minutes later, and small-model
        # rows fell to 0-17% within 10% (docs/profiles.md, runs 39-41). Their passes run in
        # rounds before, between and after the points' timing, each network's fastest pass
        # kept: the protocol's passes back to back span a few seconds, and twice a slow spell
        # that long made every calibration pass of a build slow (run 38 MobileNetV2 on LiteRT,
        # run 42 on ONNX Runtime: 11-13% slow, rows at 33% and 83% within 10%)
        m0 = time.perf_counter()
        calib_timing = SpreadTiming(calib_paths, t, CALIBRATION_ROUNDS, device=device,
                                    on_pass=lambda i, n: tick(f"end-to-end {i}/{n}"))
        calib_timing.round()
        # the points in interleaved passes, so drift hits all points alike; each derived
        # signature's check point is also timed as a derived twin
        keys = [(sig, ci, co) for sig, _, ci, co in todo]
        twins = list(made.twins.items())
        stats = time_artifacts([probe, *(paths[k] for k in keys), *(p for _, p in twins)], t,
                               device=device, on_pass=lambda i, n: tick(f"timing {i}/{n}"))
        overhead = stats[0].median_ms
        fresh = {k: max(0.0, st.median_ms - overhead)
                 for k, st in zip(keys, stats[1:1 + len(keys)], strict=True)}
        calib_timing.round()
        # the step probes again, in rounds of their own: a share is a difference of nearby
        # widths, and one round of this project's VMs has put single points a whole step off
        # (a state that slows every run for seconds hits the points timed then); each probe
        # point is the median of its rounds (the overhead is taken off each round's own)
        _, more = time_rounds([probe, *(paths[k] for k in probe_keys)], t, PROBE_ROUNDS - 1,
                              device=device, on_pass=lambda i, n: tick(f"probe rounds: {i}/{n}"))
        calib_stats = calib_timing.result()
        measure_s += time.perf_counter() - m0
        rounds = [[fresh[k] for k in probe_keys], *([max(0.0, v - r[0]) for v in r[1:]] for r in more)]
        fresh.update({k: statistics.median(v) for k, *v in zip(probe_keys, *rounds, strict=True)})
        twin_check = [{"signature": k[0], "c_in": k[1], "c_out": k[2],
                       "converted_ms": round(stats[1 + keys.index(k)].median_ms, 5),
                       "derived_ms": round(st.median_ms, 5)}
                      for (k, _), st in zip(twins, stats[1 + len(keys):], strict=True)]
        points = {**fresh, **cached}  # a probe point that is also a cached grid point: the table keeps it
        tables = {sig: LayerTable(sig, unit.kind, c_in, c_out,
                                  tuple(tuple(points[(sig, ci, co)] for co in c_out) for ci in c_in))
                  for sig, (unit, c_in, c_out) in plan.items()}

        steps = _fit_steps(probes, fresh)
        partial = LatencyProfile(t, version, host, _arch_name(model), shape, tables,
                                 {u.path: u.signature for u in units}, overhead, 0.0, 1.0,
                                 steps=steps)
        calib = []
        for (keep, width, removed, alternate), variant, st in zip(calibrations, variants, calib_stats,
                                                                  strict=True):
            layers_ms, narrow_ms = table_sums(partial, variant)
            calib.append({"keep": keep, **({"width": width} if keep is None else {}),
                          **({"alternate": alternate} if alternate is not None else {}),
                          "blocks_removed": len(removed), "measured_ms": st.median_ms,
                          "pass_medians_ms": list(st.pass_medians_ms),
                          "layers_ms": layers_ms, "narrow_ms": narrow_ms})
    fit = _fit_remainder(calib)
    intercept, scale, narrow_scale = fit
    for c in calib:
        c["predicted_ms"] = fitted_ms(fit, c["layers_ms"], c["narrow_ms"])
    return LatencyProfile(
        t, version, host, _arch_name(model), shape, tables, partial.layers, overhead,
        intercept, scale, tuple(calib), time.perf_counter() - t0,
        datetime.now(timezone.utc).isoformat(timespec="seconds"), __version__, "measured",
        {"convert_s": round(convert_s, 2), "measure_s": round(measure_s, 2),
         "points_converted": made.converted, "points_derived": made.derived,
         "templates_converted": made.templates, "not_derived": made.not_derived,
         "derived_check": twin_check, "points_from_layer_cache": len(hits),
         "calibrations_from_cache": calib_cached,
         "points_from_profile_cache": len(cached),
         "points_timed": len(keys), "probe_points": len(probe_keys),
         "probe_rounds": PROBE_ROUNDS, "calibration_rounds": len(calib_timing.todo)},
        steps=steps, narrow_scale=narrow_scale,
    )


def _narrow(u: LayerUnit, c_out: int, round_to: int) -> bool:
    """Whether a layer's prunable output is narrower than round_to (priced with
    ``narrow_scale``). Only the output: what a network adds around a narrow layer follows it
    (ONNX Runtime's reorder to NCHW), and a layer that only reads a narrow input has its own
    kernel for that in its table point (module docstring)."""
    return not u.fixed_out and c_out < round_to


def layer_model(unit: LayerUnit, c_in: int, c_out: int) -> tuple[nn.Module, torch.Tensor]:
    """A single-layer model with ``unit``'s geometry at widths (c_in, c_out), and its input."""
    if unit.kind == "linear":  # fed as a 1x1 map, flattened, as a classifier head sees it
        return nn.Sequential(nn.Flatten(), nn.Linear(c_in, c_out)).eval(), torch.zeros(1, c_in, 1, 1)
    groups = 1
    if unit.kind == "dwconv":
        c_out, groups = c_in, c_in
    m = nn.Sequential(
        nn.Conv2d(c_in, c_out, unit.kernel, unit.stride, unit.padding, unit.dilation,
                  groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ).eval()
    return m, torch.zeros(1, c_in, *unit.in_hw)


def _convert_point(unit: LayerUnit, c_in: int, c_out: int, target: Target,
                   path: str | os.PathLike) -> Path:
    m, x = layer_model(unit, c_in, c_out if unit.kind != "dwconv" else c_in)
    return convert_for(m, target, path, x, fast=True)


def _convert_points(todo: list[tuple[str, LayerUnit, int, int]], target: Target, d: Path,
                    workers: int, done: Callable[[tuple[str, int, int]], None]
                    ) -> dict[tuple[str, int, int], Path]:
    """Convert every grid point to ``d``. With ``workers`` > 1, in that many worker processes
    started as ``python -m edgeprune.profiling._convert_worker`` (not a multiprocessing pool,
    which would re-import the caller's ``__main__``); their output is captured and shown
    only when one fails."""
    suffix = ARTIFACT_SUFFIX[target.runtime]
    jobs = {(sig, ci, co): (unit, ci, co, d / f"point{i}{suffix}")
            for i, (sig, unit, ci, co) in enumerate(todo)}
    if workers == 1 or len(jobs) < 4:
        for k, (unit, ci, co, path) in jobs.items():
            _convert_point(unit, ci, co, target, path)
            done(k)
        return {k: v[3] for k, v in jobs.items()}
    keys = list(jobs)
    chunks = [keys[i::workers] for i in range(workers)]  # round robin: each gets every kind
    procs = []
    for i, chunk in enumerate(chunks):
        spec = {"target": target.to_dict(),
                "jobs": [{"key": list(k), "unit": dataclasses.asdict(jobs[k][0]), "c_in": k[1],
                          "c_out": k[2], "path": str(jobs[k][3])} for k in chunk]}
        err = (d / f"worker{i}.log").open("w+")
        proc = subprocess.Popen([sys.executable, "-m", "edgeprune.profiling._convert_worker"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                text=True, env=_worker_env())
        proc.stdin.write(json.dumps(spec))  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
        procs.append((proc, err))
    finished: queue.Queue = queue.Queue()

    def read(proc: subprocess.Popen) -> None:
        try:  # lines other than the worker's own (a converter's progress) are ignored
            with proc.stdout:  # type: ignore[union-attr]
                for line in proc.stdout:  # type: ignore[union-attr]
                    if line.startswith(_DONE):
                        finished.put(tuple(json.loads(line[len(_DONE):])))
        finally:
            finished.put(None)

    readers = [threading.Thread(target=read, args=(p,), daemon=True) for p, _ in procs]
    for r in readers:
        r.start()
    open_readers = len(readers)
    while open_readers:
        k = finished.get()
        if k is None:
            open_readers -= 1
        else:
            done(k)
    failures = []
    for proc, err in procs:
        if proc.wait() != 0:
            err.seek(0)
            tail = [ln for ln in err.read().splitlines() if ln.strip()][-3:]
            failures.append(f"exit {proc.returncode}: {' | '.join(tail) or 'no output'}")
        err.close()
    if failures:
        raise ProfileError(f"converting single-layer models for {target.name} failed in a worker "
                           f"process ({'; '.join(failures)})")
    missing = [k for k in keys if not jobs[k][3].is_file()]
    if missing:
        raise ProfileError(f"converter workers exited cleanly but wrote no file for {missing[:3]}")
    return {k: v[3] for k, v in jobs.items()}


# LiteRT single-layer points are derived from one converted template per signature (see
# edgeprune.convert.tflite_resize): template widths are primes no other dimension of the layer
# takes; a signature with fewer missing points than DERIVE_MIN is simply converted
_TEMPLATE_WIDTHS = (13, 11, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71)
DERIVE_MIN = 5
# timing rounds of the step probes; each probe point is the median of its rounds
PROBE_ROUNDS = 3
Job = tuple[str, LayerUnit, int, int]


def _derivable(todo: list[Job], t: Target) -> dict[str, list[Job]]:
    """The signatures whose missing points are derived from a template, with their points
    (LiteRT only: an ONNX single-layer export takes ~0.05 s, there is nothing to save)."""
    if t.runtime != "litert":
        return {}
    by_sig: dict[str, list[Job]] = defaultdict(list)
    for job in todo:
        # one channel is converted, never derived: the converter makes a 1-input-channel conv
        # a depthwise conv with a depth multiplier (another op, not the template resized)
        if 1 not in (job[2], job[3]):
            by_sig[job[0]].append(job)
    return {sig: jobs for sig, jobs in by_sig.items() if len(jobs) >= DERIVE_MIN}


def _template_widths(unit: LayerUnit, jobs: Sequence[Job] = ()) -> tuple[int, int]:
    """(c_in, c_out) of ``unit``'s template: widths no other dimension of the converted graph
    takes (map sizes with their padding, kernel, ranks), so each dimension equal to one is a
    channel axis; where there are enough, also widths none of the points it stands for
    (``jobs``) takes, so the template is not one of them. A depthwise layer's c_out is 0 (it
    follows c_in)."""
    taken = {1, 2, 3, 4, *unit.kernel, *unit.stride}
    reach = 2 * max(unit.padding) + max(unit.kernel) + 1
    for n in (*unit.in_hw, *unit.out_hw):
        taken.update(range(n, n + reach))
    free = [w for w in _TEMPLATE_WIDTHS if w not in taken]
    points = {w for job in jobs for w in job[2:]}
    free = [w for w in free if w not in points] + [w for w in free if w in points]
    return (free[0], 0) if unit.kind == "dwconv" else (free[0], free[1])


def _conversions_planned(todo: list[Job], t: Target, lcache) -> int:
    """Progress steps for making ``todo``: one per point (converted or derived) and one per
    template not yet in the layer cache."""
    templates = [(sig, *_template_widths(jobs[0][1], jobs)) for sig, jobs in _derivable(todo, t).items()]
    return len(todo) + sum(1 for k in templates if lcache is None or lcache.get(*k, t) is None)


@dataclass
class _Probe:
    """The points of one step probe: ``step`` is b..b+round_to, ``first`` is 1..round_to."""
    unit: LayerUnit
    step: list[tuple[int, int]]
    first: list[tuple[int, int]]

    def points(self) -> list[tuple[int, int]]:
        return [*self.step, *self.first]


@dataclass
class _Made:
    paths: dict[tuple[str, int, int], Path]  # every point of todo
    converted: int  # points converted (derivation checks included; templates not)
    derived: int
    templates: int  # templates converted (not taken from the layer cache)
    not_derived: list[str]  # derivable signatures whose check failed: converted instead
    twins: dict[tuple[str, int, int], Path]  # per derived signature: its first check point, derived


def _make_points(todo: list[Job], t: Target, d: Path, workers: int, lcache,
                 tick: Callable[[str], None]) -> _Made:
    """Files for every point of ``todo``. A signature with enough missing points (LiteRT) is
    converted at its template widths and at its smallest and largest missing point; the two
    are also derived from the template, and when both derived files have the structure of the
    converted ones (:func:`tflite_structure`), the signature's other points are derived;
    otherwise they are converted, and the signature is listed in ``not_derived``."""
    from edgeprune.convert.tflite_resize import resize_tflite, tflite_structure
    from edgeprune.errors import ExportError

    plans = _derivable(todo, t)
    suffix = ARTIFACT_SUFFIX[t.runtime]
    derivable = {(sig, ci, co) for jobs in plans.values() for sig, _, ci, co in jobs}
    direct = [job for job in todo if (job[0], job[2], job[3]) not in derivable]
    templates: list[Job] = []
    derive: dict[str, tuple[tuple[str, int, int], Path | None, list[Job], list[Job]]] = {}
    for sig, jobs in plans.items():
        unit = jobs[0][1]
        tkey = (sig, *_template_widths(unit, jobs))
        widths = sorted(jobs, key=lambda j: (j[2], j[3]))
        checks = [widths[0], widths[-1]]
        tpl = lcache.get(*tkey, t) if lcache is not None else None
        if tpl is None:
            templates.append((sig, unit, tkey[1], tkey[2]))
        direct += checks
        derive[sig] = (tkey, tpl, checks, widths[1:-1])

    def done(k: tuple[str, int, int]) -> None:
        tick(f"convert {k[0]} {k[1]}x{k[2]}")

    files = _convert_points(direct + templates, t, d, workers, done)
    paths = {(sig, ci, co): files[(sig, ci, co)] for sig, _, ci, co in direct}
    twins: dict[tuple[str, int, int], Path] = {}
    fallback: list[Job] = []
    not_derived: list[str] = []
    n = 0
    for sig, (tkey, tpl, checks, rest) in derive.items():
        if tpl is None:
            tpl = files[tkey] if lcache is None else lcache.put(*tkey, t, files[tkey])

        def to(ci: int, co: int, tkey=tkey) -> dict[int, int]:
            return {tkey[1]: ci} if tkey[2] == 0 else {tkey[1]: ci, tkey[2]: co}

        derived_checks = []
        try:
            for _, _, ci, co in checks:
                n += 1
                out = resize_tflite(tpl, d / f"derived{n}{suffix}", to(ci, co))
                if tflite_structure(out) != tflite_structure(paths[(sig, ci, co)]):
                    raise ExportError(f"{sig} at {ci}x{co}: the derived graph differs from the converted one")
                derived_checks.append(((sig, ci, co), out))
        except ExportError:
            fallback += rest
            not_derived.append(sig)
            continue
        twins[derived_checks[0][0]] = derived_checks[0][1]
        for _, _, ci, co in rest:
            n += 1
            paths[(sig, ci, co)] = resize_tflite(tpl, d / f"derived{n}{suffix}", to(ci, co))
            tick(f"derive {sig} {ci}x{co}")
    if fallback:
        (d / "fallback").mkdir()
        more = _convert_points(fallback, t, d / "fallback", workers, done)
        paths.update(more)
    return _Made(paths, converted=len(direct) + len(fallback),
                 derived=len(todo) - len(direct) - len(fallback), templates=len(templates),
                 not_derived=not_derived, twins=twins)


_DONE = "edgeprune-converted "  # the worker's line for a finished job: this, then its key as JSON


def _worker_env() -> dict[str, str]:
    """The caller's environment, with edgeprune importable (also from a source checkout) and
    the converters' C++ logging at errors only (the worker's output is shown on failure)."""
    import edgeprune

    env = dict(os.environ)
    root = str(Path(edgeprune.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def calib_network(model: nn.Module, example: torch.Tensor, groups, round_to: int,
                  keep: float | None, width: int | None, removed: Sequence[str] = (),
                  alternate: int | None = None) -> nn.Module:
    """One calibration network: ``model`` at :func:`_calib_widths`, with the residual blocks
    named in ``removed`` removed (the model itself at keep 1.0)."""
    from edgeprune.graph import shrink_to_widths

    widths = _calib_widths(groups, keep, width, round_to, alternate)
    net = model if widths is None else shrink_to_widths(model, example, widths)
    return remove_blocks(net, list(removed)) if removed else net


def table_sums(prof: LatencyProfile, net: nn.Module) -> tuple[float, float]:
    """(table ms of ``net``'s layers, of them the layers with an output below round_to): what
    the fit weighs with ``layer_scale`` and ``narrow_scale``."""
    total = narrow = 0.0
    for u in layer_units(net, prof.input_shape):
        v = prof.layer_ms(u)
        total += v
        narrow += v if _narrow(u, u.c_out, prof.target.round_to) else 0.0
    return total, narrow


def fitted_ms(fit: tuple[float, float, float], layers_ms: float, narrow_ms: float) -> float:
    """A network's latency under ``fit`` = (intercept, scale, narrow_scale) from its
    :func:`table_sums`."""
    intercept, scale, narrow_scale = fit
    return scale * (layers_ms - narrow_ms) + narrow_scale * narrow_ms + intercept


def _fit_remainder(calib: list[dict[str, Any]]) -> tuple[float, float, float]:
    """(intercept, scale, narrow_scale): :func:`_fit_uniform` over the uniformly thinned
    calibrations, then, where there are copies with every other group narrow (``alternate``),
    ``narrow_scale`` alone refitted (relative least squares, intercept and scale held) over
    every calibration with narrow layers, and kept if it is at least ``scale``.

    Two stages, so the copies that mix narrow and wide layers set the narrow layers' price
    and nothing else: a pruner's networks (every width on the grid) are priced by intercept
    and scale alone, exactly as without them. Fitted in one go, the mixed copies pulled
    ONNX Runtime MobileNetV2's ``layer_scale`` from 0.88 to 0.81 (its wide layers run cheaper
    beside narrow ones than in the full network), the full model 13% under its own
    measurement and the on-grid variants from 90% to 80% within 10% (docs/profiles.md)."""
    uniform = [c for c in calib if c.get("alternate") is None]
    intercept, scale, narrow_scale = _fit_uniform(uniform)
    if len(uniform) == len(calib):
        return intercept, scale, narrow_scale
    rows = [c for c in calib if c.get("narrow_ms", 0.0) > 0]
    a = np.array([c["narrow_ms"] / c["measured_ms"] for c in rows])
    b = np.array([1.0 - (intercept + scale * (c["layers_ms"] - c["narrow_ms"])) / c["measured_ms"]
                  for c in rows])
    refit = float(a @ b / (a @ a)) if len(rows) else scale
    return intercept, scale, max(scale, refit)


def _fit_uniform(calib: list[dict[str, Any]]) -> tuple[float, float, float]:
    """(intercept, scale, narrow_scale): least squares of measured = intercept + scale x the
    other layers + narrow_scale x the layers with an output below round_to (``narrow_ms``), over the
    end-to-end calibrations, in relative error (each row divided by its measurement): a
    prediction is judged by its relative error, and in absolute terms the full model's row
    outweighs a thin copy's 8x over, so the thin end was fitted loosest. Without a calibration
    that has narrow layers, or where the three-term fit prices narrow layers below grid ones
    (narrow_scale < scale), the narrow layers share the one scale: the term is there for what
    a runtime adds after narrow layers in a network (a layout reorder), and a
    cheaper narrow layer is the fit trading that term against the intercept, which few
    calibrations of a small network cannot tell apart (user_net on ONNX Runtime: intercept
    27% of the network, narrow_scale 0.2; its off-grid row fell from 73% to 47% within 10%).
    A scale <= 0 (only a broken measurement gives one) would predict that wider layers are
    free or faster; then the scale is 1 and the intercept the mean gap."""
    b = np.array([c["measured_ms"] for c in calib])
    total = np.array([c["layers_ms"] for c in calib])
    narrow = np.array([c.get("narrow_ms", 0.0) for c in calib])
    if np.any(narrow > 0) and np.any(narrow < total):
        a3 = np.stack([np.ones_like(b), total - narrow, narrow], axis=1)
        (intercept, scale, narrow_scale), *_ = np.linalg.lstsq(a3 / b[:, None], np.ones_like(b), rcond=None)
        if 0 < scale <= narrow_scale:
            return float(intercept), float(scale), float(narrow_scale)
    a = np.stack([np.ones_like(b), total], axis=1)
    (intercept, scale), *_ = np.linalg.lstsq(a / b[:, None], np.ones_like(b), rcond=None)
    if not scale > 0:
        scale = 1.0
        intercept = float(np.mean(b - total))
    return float(intercept), float(scale), float(scale)


def dense_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm at PyTorch's default (gamma 1, beta 0).

    Latency depends on structure, not weight values, with one exception: converters fold
    BatchNorm into the conv and delete work that is provably zero. A model with zero-gamma
    BatchNorms (zero-initialised residual branches, gates driven to zero) loses those
    branches from its converted graph and looks faster than it is. Measure trained models,
    or this copy.
    """
    import copy

    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d) and mod.affine:
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)
    return m


def _round_width(w: float, round_to: int, full: int) -> int:
    return int(min(full, max(round_to, round_to * round(w / round_to))))


def _calib_widths(groups, keep: float | None, width: int | None, round_to: int,
                  alternate: int | None = None) -> dict[str, int] | None:
    """A calibration copy's group widths: ``keep`` of each group rounded to round_to, or
    (keep None) every group at ``width`` channels, or with ``alternate`` 0 / 1 the even / odd
    groups at ``width`` and the others full; None for the full model (keep 1.0)."""
    if keep is None:
        return {g.name: min(g.width, width) if alternate is None or i % 2 == alternate else g.width
                for i, g in enumerate(groups)}
    if keep < 1.0:
        return {g.name: _round_width(g.width * keep, round_to, g.width) for g in groups}
    return None


def _cache_points(cache: LatencyProfile | None, t: Target, version: str,
                  host: dict[str, Any]) -> dict[tuple[str, int, int], float]:
    if cache is None:
        return {}
    same = (cache.target.name == t.name and cache.target.threads == t.threads
            and cache.runtime_version == version and cache.host.get("cpu") == host.get("cpu")
            and cache.source == "measured")
    if not same:
        raise ProfileError(
            f"cache profile is for {cache.target.name} / {cache.target.runtime} "
            f"{cache.runtime_version} on {cache.host.get('cpu')!r}; it cannot seed a profile of "
            f"{t.name} / {version} on {host.get('cpu')!r}"
        )
    return {(s, ci, co): tab.latency_ms[i][j] for s, tab in cache.tables.items()
            for i, ci in enumerate(tab.c_in) for j, co in enumerate(tab.c_out)}


def _input_shape(model: nn.Module) -> tuple[int, int, int]:
    spec = getattr(model, "edgeprune_spec", None)
    if spec is None:
        raise ConfigError("model has no input spec; pass input_shape=(C, H, W)")
    return spec.input.shape


def _arch_name(model: nn.Module) -> str | None:
    spec = getattr(model, "edgeprune_spec", None)
    if spec is not None:
        return spec.architecture
    arch = getattr(model, "edgeprune_arch", None)
    return arch.get("name") if isinstance(arch, dict) else type(model).__name__
