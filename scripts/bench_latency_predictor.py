"""Proof of the latency predictor: predicted vs measured latency of random pruned variants.

For each zoo model (and ``user_net``, an architecture of a user's own: scripts/_user_net.py)
and host target: build the profile (timed), draw random pruned variants
(per channel group a keep ratio uniform in [0.2, 1.0], rounded to the target's round_to; or
to --width-step for widths off the profile's grid, or in --keep LO HI for small models; with
--remove-blocks P each removable residual block is also removed with probability P, at least
one per variant: the networks the pruner makes below the channel floor),
predict each, convert and measure it end to end. Writes bench/results/latency_predictor.json
with, per target and model, the share of variants within +-10% and +-5%, the median and max
absolute % error, the profile build time, and the speed-up fidelity: measured speed-up vs MACs
reduction for the same variants, and the repeatability: every variant timed again in a
second round, so each row shows how well this machine's measurements agree with themselves
(the floor under any predictor's error). The profiles are saved to profiles/<target>/<model>.json
by the default run only (on-grid variants, not --quick: `make bench` leaves the committed
profiles alone, and a committed profile is the one whose on-grid row is in the JSON).

    .venv/bin/python scripts/bench_latency_predictor.py [--quick] [--models resnet20 ...]
        [--targets host-litert host-onnxruntime] [--variants 30] [--width-step 4] [--keep 0.05 0.3]
        [--remove-blocks 0.5]

Rows are merged into the JSON by (model, target, variant set, host): run the matrix in parts.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from _bench import host_key, provenance  # scripts/_bench.py, beside this file
from _user_net import NAME as USER_NET
from _user_net import UserNet

from edgeprune import models
from edgeprune._io import write_json
from edgeprune.convert import tflite_op_names
from edgeprune.graph import group_structure, shrink_to_widths
from edgeprune.graph.blocks import remove_blocks, residual_blocks
from edgeprune.graph.layers import layer_units
from edgeprune.profiling.latency import dense_copy, profile
from edgeprune.profiling.measurement import convert_for, time_artifacts
from edgeprune.targets import load_target

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)


def macs(model) -> int:
    return sum(u.macs() for u in layer_units(model, SHAPE))


def random_widths(groups, rng, round_to, keep_range=(0.2, 1.0)):
    out = {}
    for g in groups:
        keep = rng.uniform(*keep_range)
        w = int(round(g.width * keep / round_to)) * round_to
        out[g.name] = int(min(g.width, max(min(round_to, g.width), w)))
    return out


def _convert(model, target, path):
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    return convert_for(model, target, path, torch.zeros(1, *SHAPE))


def _convert_other_calibration(model, path):
    """The int8 baseline calibrated on other synthetic data (uniform in [-3, 3], another seed)
    than convert_for's: latency must not depend on the quantisation ranges."""
    from edgeprune.convert import to_tflite_int8

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    cal = [torch.rand((8, *SHAPE), generator=torch.Generator().manual_seed(1)) * 6 - 3]
    return to_tflite_int8(model, path, torch.zeros(1, *SHAPE), cal, min_images=8, logits="full")


def _step_summary(v: dict) -> dict:
    """A probe's fit and measured shares (the first step's too, where it was measured)."""
    keys = ("step", "height", "flat", "irregular", "fit_rms", "measured_share")
    out = {k: v[k] for k in (*keys, "signature")}
    if "first" in v:
        out["first"] = {k: v["first"][k] for k in keys}
    return out


def run_one(name: str, target_name: str, n_variants: int, seed: int, log, save: bool,
            width_step: int | None = None, keep_range=(0.2, 1.0), block_p: float = 0.0) -> dict:
    target = load_target(target_name)
    step = width_step or target.round_to
    torch.manual_seed(seed)
    # structure is what is timed; default BatchNorm, so no branch is folded away as zero
    model = dense_copy(UserNet() if name == USER_NET else models.create(name)).eval()
    t0 = time.perf_counter()
    prof = profile(model, target, input_shape=SHAPE)
    build_s = time.perf_counter() - t0
    where = "not saved (only the on-grid run without --quick saves)"
    if save:
        out_path = ROOT / "profiles" / target.name / f"{name}.json"
        prof.save(out_path)
        where = str(out_path.relative_to(ROOT))
    log(f"  {name} on {target.name}: profile built in {build_s:.0f} s -> {where}")
    example = torch.zeros(1, *SHAPE)
    groups = group_structure(model, example)
    base_pred = prof.predict_ms(model)
    base_macs = macs(model)
    rng = np.random.default_rng(seed)
    variants = [shrink_to_widths(model, example, random_widths(groups, rng, step, keep_range))
                for _ in range(n_variants)]
    removed = [0] * n_variants
    if block_p > 0:
        blocks = [b.name for b in residual_blocks(model, example)]
        if not blocks:
            raise SystemExit(f"--remove-blocks: {name} has no removable residual block")
        for i in range(n_variants):
            take = [b for b in blocks if rng.uniform() < block_p] or [blocks[rng.integers(len(blocks))]]
            variants[i], removed[i] = remove_blocks(variants[i], take), len(take)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeprune-bench-") as d:
        # convert in two processes, then time one at a time with nothing else running
        suffix = ".tflite" if target.runtime == "litert" else ".onnx"
        paths = [Path(d) / f"v{i}{suffix}" for i in range(n_variants)]
        base_path = Path(d) / f"base{suffix}"
        ctx = multiprocessing.get_context("spawn")
        int8 = target.precision == "int8"
        other_path = Path(d) / f"base_other_calibration{suffix}"
        with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as ex:
            other = ex.submit(_convert_other_calibration, model, other_path) if int8 else None
            list(ex.map(_convert, [model, *variants], [target] * (n_variants + 1), [base_path, *paths]))
            if other is not None:
                other.result()
        # the baseline and every variant, timed in the target's interleaved passes
        # (int8: the other calibration right after the baseline, so drift hits both alike)
        base, *stats = time_artifacts([base_path, *([other_path] if int8 else []), *paths], target)
        base_ms = base.median_ms
        # the same files timed again, in a second round of the protocol: how well a
        # measurement on this machine agrees with itself is the floor under any predictor's error
        again = time_artifacts([base_path, *paths], target)
        calibration = None
        if int8:
            other_st = stats.pop(0)
            calibration = {
                "what": "the baseline converted with two synthetic calibrations (normal noise seed "
                        "0, as profiles use; uniform noise in [-3, 3] seed 1), timed side by side",
                "same_ops": tflite_op_names(base_path) == tflite_op_names(other_path),
                "measured_ms": [round(base_ms, 5), round(other_st.median_ms, 5)],
                "ratio": round(other_st.median_ms / base_ms, 4),
            }
            log(f"    two calibrations: {base_ms:.4f} vs {other_st.median_ms:.4f} ms "
                f"(x{calibration['ratio']:.3f}), same ops: {calibration['same_ops']}")
        for i, (variant, meas) in enumerate(zip(variants, stats, strict=True)):
            pred = prof.predict_ms(variant)
            m = macs(variant)
            rows.append({"predicted_ms": round(pred, 5), "measured_ms": round(meas.median_ms, 5),
                         **({"blocks_removed": removed[i]} if block_p > 0 else {}),
                         "remeasured_ms": round(again[i + 1].median_ms, 5),
                         "measured_iqr_ms": round(meas.iqr_ms, 5),
                         "pass_spread_pct": round(100 * meas.pass_spread, 2),
                         "error_pct": round(100 * (pred - meas.median_ms) / meas.median_ms, 3),
                         "macs": m, "macs_reduction": round(base_macs / m, 4),
                         "measured_speedup": round(base_ms / meas.median_ms, 4)})
            log(f"    variant {i + 1:2d}/{n_variants}: predicted {pred:.4f} ms, measured "
                f"{meas.median_ms:.4f} ms ({rows[-1]['error_pct']:+.1f}%), MACs /{base_macs / m:.2f}")
    errs = [abs(r["error_pct"]) for r in rows]
    self_diff = [100 * abs(r["remeasured_ms"] / r["measured_ms"] - 1) for r in rows]
    return {
        "model": name, "target": target.name, "variants": len(rows),
        "variant_set": _variant_set(step, target.round_to, keep_range, block_p),
        "within_10pct": round(sum(e <= 10 for e in errs) / len(errs), 4),
        "within_5pct": round(sum(e <= 5 for e in errs) / len(errs), 4),
        "median_abs_error_pct": round(statistics.median(errs), 3),
        "max_abs_error_pct": round(max(errs), 3),
        "repeatability": {
            "what": "each variant timed again in a second round of the protocol right after the "
                    "first: |second / first - 1|",
            "within_10pct": round(sum(e <= 10 for e in self_diff) / len(self_diff), 4),
            "within_5pct": round(sum(e <= 5 for e in self_diff) / len(self_diff), 4),
            "median_abs_diff_pct": round(statistics.median(self_diff), 3),
            "max_abs_diff_pct": round(max(self_diff), 3),
            "baseline_ratio": round(again[0].median_ms / base_ms, 4)},
        "profile_build_s": round(build_s, 1),
        "profile_points": sum(t.points() for t in prof.tables.values()),
        # the profile's own end-to-end fit, so a row that misses can be read back to its build
        "profile_fit": {"overhead_ms": round(prof.overhead_ms, 5),
                        "remainder_intercept_ms": round(prof.remainder_intercept_ms, 5),
                        "layer_scale": round(prof.layer_scale, 4),
                        "narrow_scale": None if prof.narrow_scale is None else round(prof.narrow_scale, 4),
                        "calibration": [{k: (round(v, 5) if isinstance(v, float) else v)
                                         for k, v in c.items() if k != "pass_medians_ms"}
                                        | {"pass_medians_ms": [round(v, 5) for v in c["pass_medians_ms"]]}
                                        for c in prof.calibration]},
        "steps": {kind: {axis: _step_summary(v) for axis, v in axes.items()}
                  for kind, axes in (prof.steps or {}).items()},
        "baseline": {"measured_ms": round(base_ms, 5), "predicted_ms": round(base_pred, 5),
                     "macs": base_macs},
        "level_corrected": level_corrected(rows, base_pred / base_ms),
        "speedup_fidelity": {
            "median_macs_reduction": round(statistics.median(r["macs_reduction"] for r in rows), 3),
            "median_measured_speedup": round(statistics.median(r["measured_speedup"] for r in rows), 3),
            "median_speedup_per_macs_reduction": round(statistics.median(
                r["measured_speedup"] / r["macs_reduction"] for r in rows), 3),
        },
        **({"calibration_independence": calibration} if calibration else {}),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="resnet20 only, 8 variants per target")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--targets", nargs="*", default=["host-litert", "host-onnxruntime"])
    ap.add_argument("--variants", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width-step", type=int, default=None,
                    help="variant widths in multiples of this (default: the target's round_to, on "
                         "the profile's grid); e.g. 4 for off-grid widths")
    ap.add_argument("--keep", type=float, nargs=2, default=(0.2, 1.0), metavar=("LO", "HI"),
                    help="range of the random keep ratio per channel group (e.g. 0.05 0.3: small models)")
    ap.add_argument("--remove-blocks", type=float, default=0.0, metavar="P",
                    help="also remove each removable residual block with probability P (at least one)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "latency_predictor.json"))
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    names = a.models or (["resnet20"] if a.quick else [*models.names(), USER_NET])
    n = 8 if a.quick and a.variants == 30 else a.variants
    log = lambda s: print(s, flush=True)  # noqa: E731
    results = []
    t_all = time.perf_counter()
    head = provenance("latency_predictor", "bench_latency_predictor.py", argv)
    earlier = Path(a.out)
    before = earlier.read_text() if earlier.is_file() else None
    for target in a.targets:
        for name in names:
            # the profile does not depend on the variants: every full run saves it
            default = a.width_step is None and tuple(a.keep) == (0.2, 1.0) and not a.remove_blocks
            save = default and not a.quick and name != USER_NET  # profiles/ holds the zoo's
            results.append(run_one(name, target, n, a.seed, log, save=save,
                                   width_step=a.width_step, keep_range=tuple(a.keep),
                                   block_p=a.remove_blocks))
            # after each row, merged into the file as it was before this run: a long run that
            # fails later keeps what it measured
            write_json(a.out, _merge(before, _doc(head, results, time.perf_counter() - t_all)))
    print()
    print(f"{'target':18} {'model':12} {'variants':16} {'n':>3} {'<=10%':>6} {'<=5%':>6} {'med|err|%':>9} "
          f"{'max|err|%':>9} {'self<=10%':>9} {'level':>6} {'lc<=10%':>7} {'build s':>7} {'MACs/x':>7} "
          f"{'speedup':>7}")
    for r in results:
        f = r["speedup_fidelity"]
        print(f"{r['target']:18} {r['model']:12} {r['variant_set']['name']:16} {r['variants']:3d} "
              f"{100 * r['within_10pct']:5.0f}% "
              f"{100 * r['within_5pct']:5.0f}% {r['median_abs_error_pct']:9.2f} {r['max_abs_error_pct']:9.2f} "
              f"{100 * r['repeatability']['within_10pct']:8.0f}% "
              f"{r['level_corrected']['level']:6.3f} {100 * r['level_corrected']['within_10pct']:6.0f}% "
              f"{r['profile_build_s']:7.0f} {f['median_macs_reduction']:7.2f} {f['median_measured_speedup']:7.2f}")
    print(f"wrote {a.out}")
    return 0


def _doc(head: dict, results: list[dict], wall_s: float) -> dict:
    return {**head,
            "method": "random keep ratio per channel group in [0.2, 1.0] rounded to round_to; "
                      "latency = the target's protocol (batch 1): median of the fastest of its "
                      "passes, baseline and variants interleaved; error = (pred - meas) / meas",
            "wall_s": round(wall_s, 1), "results": results}


def level_corrected(rows: list[dict], level: float) -> dict:
    """The error once the profile's level is taken out: each prediction divided by ``level``
    (the baseline's predicted / measured, the same run). It separates what the tables and
    step model get wrong from the machine being faster or slower while the profile was built
    than while the variants were timed (on a VM, whole-minute phases of +-10% were seen)."""
    errs = [100 * abs(r["predicted_ms"] / level / r["measured_ms"] - 1) for r in rows]
    return {"level": round(level, 4),
            "within_10pct": round(sum(e <= 10 for e in errs) / len(errs), 4),
            "median_abs_error_pct": round(statistics.median(errs), 3),
            "max_abs_error_pct": round(max(errs), 3)}


def _variant_set(step: int, round_to: int, keep_range, block_p: float = 0.0) -> dict:
    small = tuple(keep_range) != (0.2, 1.0)
    name = (("on-grid" if step == round_to else f"off-grid step {step}") + (" small" if small else "")
            + (" blocks removed" if block_p > 0 else ""))
    return {"name": name, "width_step": step, "round_to": round_to, "keep": list(keep_range),
            **({"block_removal_p": block_p} if block_p > 0 else {})}


def _row_key(r: dict) -> tuple:
    vs = r.get("variant_set", {"name": "on-grid"})  # rows written before variant sets were on-grid
    return r["model"], r["target"], vs["name"]


def _merge(earlier: str | None, doc: dict) -> dict:
    """``doc`` merged into an earlier file's text: rows this run did not measure are kept,
    the ones it re-measured on this host replaced (another CPU's rows stay beside them). Every
    invocation's command, date, wall time and host is listed under ``runs``, and each row
    names the run it came from (runs older than the per-run host take the file's)."""
    import json

    this = {k: doc[k] for k in ("command", "date", "wall_s", "timing_cpus", "host")}
    if earlier is None:
        return {**doc, "runs": [this], "results": [{**r, "run": 0} for r in doc["results"]]}
    old = json.loads(earlier)
    runs = old.get("runs") or [{k: old.get(k) for k in ("command", "date", "wall_s")}]
    runs = [{**r, "host": r.get("host") or old.get("host")} for r in runs]
    keys = {(*_row_key(r), *host_key(doc["host"])) for r in doc["results"]}
    kept = [{"run": 0, **r} for r in old.get("results", [])
            if (*_row_key(r), *host_key(runs[r.get("run", 0)]["host"])) not in keys]
    new = [{**r, "run": len(runs)} for r in doc["results"]]
    return {**doc, "runs": [*runs, this], "results": kept + new}


if __name__ == "__main__":
    raise SystemExit(main())
