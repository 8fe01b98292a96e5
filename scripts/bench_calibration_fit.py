"""Which calibration networks the latency profile's end-to-end fit should use, judged on
validation variants (seed 1 by default; scripts/bench_latency_predictor.py's final rows use
seed 0).

For each model and host target: build the profile (its calibrations timed in the build, as
always), then time together, in the target's interleaved passes: every calibration network
of the profile again and random pruned variants of each requested set (``on``: widths on the
round_to grid, keep 0.2-1.0; ``off``: widths in steps of 4, keep 0.2-1.0; ``small``: steps of
4, keep 0.05-0.3). Each set's variants are predicted by:

- ``profile``: the profile as built (its calibrations timed in the build);
- ``uniform``: the fit refitted on the re-timed calibrations, without the two copies with
  every other group at round_to / 4 (the calibration set before 2026-12-08);
- ``one_fit``: every re-timed calibration, those two included, in one three-term fit
  (edgeprune at f8d137c);
- ``alternate``: edgeprune's fit on every re-timed calibration (:func:`_fit_remainder`:
  intercept and scale from the uniform copies, the two mixed ones refit narrow_scale alone).

``uniform``, ``one_fit`` and ``alternate`` are the choice, made on the same timing;
``profile`` against ``alternate`` is what timing the calibrations in the build rather than
beside the variants costs (``calibration_level``: each calibration's build time over its
re-timed one). Each network's two table sums are kept (``sums``), so another fit can be
judged from the file. Writes bench/results/calibration_fit.json (rows merged by model,
target, seed and host).

    .venv/bin/python scripts/bench_calibration_fit.py --models mobilenetv2 user_net
        --targets host-onnxruntime --sets small off [--seed 1] [--variants 30]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing
from _bench import ROOT, merge_rows, provenance, rows_with_host
from _user_net import NAME as USER_NET
from _user_net import UserNet
from bench_latency_predictor import SHAPE, _convert, random_widths

from edgeprune import models
from edgeprune._io import write_json
from edgeprune.graph import group_structure, shrink_to_widths
from edgeprune.graph.blocks import residual_blocks
from edgeprune.profiling.latency import (
    _fit_remainder,
    _fit_uniform,
    calib_network,
    dense_copy,
    fitted_ms,
    profile,
    table_sums,
)
from edgeprune.profiling.measurement import time_artifacts
from edgeprune.targets import load_target

SETS = {"on": (None, (0.2, 1.0)), "off": (4, (0.2, 1.0)), "small": (4, (0.05, 0.3))}
FORMS = ("profile", "uniform", "one_fit", "alternate")


def _summary(errs: list[float]) -> dict:
    return {"within_10pct": round(sum(abs(e) <= 10 for e in errs) / len(errs), 4),
            "median_error_pct": round(statistics.median(errs), 2),
            "max_abs_error_pct": round(max(abs(e) for e in errs), 2)}


def run_one(name: str, target_name: str, sets: list[str], n: int, seed: int, log) -> dict:
    t = load_target(target_name)
    torch.manual_seed(seed)
    model = dense_copy(UserNet() if name == USER_NET else models.create(name)).eval()
    t0 = time.perf_counter()
    prof = profile(model, t, input_shape=SHAPE)
    build_s = time.perf_counter() - t0
    log(f"  {name} on {t.name}: profile built in {build_s:.0f} s")
    x = torch.zeros(1, *SHAPE)
    groups = group_structure(model, x)
    blocks = [b.name for b in residual_blocks(model, x)]
    nets = [calib_network(model, x, groups, t.round_to, c["keep"], c.get("width"),
                          blocks if c["blocks_removed"] else (), c.get("alternate"))
            for c in prof.calibration]
    n_cal = len(nets)
    for s in sets:
        step, keep = SETS[s]
        rng = np.random.default_rng(seed)
        nets += [shrink_to_widths(model, x, random_widths(groups, rng, step or t.round_to, keep))
                 for _ in range(n)]
    with tempfile.TemporaryDirectory(prefix="edgeprune-bench-") as d:
        suffix = ".tflite" if t.runtime == "litert" else ".onnx"
        paths = [Path(d) / f"n{i}{suffix}" for i in range(len(nets))]
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
            list(ex.map(_convert, nets, [t] * len(nets), paths))
        stats = time_artifacts(paths, t)
    sums = [table_sums(prof, net) for net in nets]
    ms = [st.median_ms for st in stats]
    cal = [{**dict(zip(("layers_ms", "narrow_ms"), sums[i], strict=True)), "measured_ms": ms[i],
            "alternate": prof.calibration[i].get("alternate")} for i in range(n_cal)]
    narrow_scale = prof.layer_scale if prof.narrow_scale is None else prof.narrow_scale
    fits = {"profile": (prof.remainder_intercept_ms, prof.layer_scale, narrow_scale),
            "uniform": _fit_remainder([c for c in cal if c["alternate"] is None]),
            "one_fit": _fit_uniform(cal),
            "alternate": _fit_remainder(cal)}
    out = {"model": name, "target": t.name, "seed": seed, "variants": n, "profile_build_s": round(build_s, 1),
           "fits": {f: [round(v, 6) for v in fit] for f, fit in fits.items()},
           "calibration_level": [
               {"keep": c["keep"], "width": c.get("width"), "alternate": c.get("alternate"),
                "blocks_removed": c["blocks_removed"], "build_ms": round(c["measured_ms"], 5),
                "retimed_ms": round(ms[i], 5), "ratio": round(c["measured_ms"] / ms[i], 4),
                "sums": [round(v, 6) for v in sums[i]]}
               for i, c in enumerate(prof.calibration)],
           "sets": {}}
    for k, s in enumerate(sets):
        lo = n_cal + k * n
        rows = range(lo, lo + n)
        out["sets"][s] = {f: _summary([100 * (fitted_ms(fit, *sums[i]) / ms[i] - 1) for i in rows])
                          for f, fit in fits.items()}
        out["sets"][s]["measured_ms"] = [round(ms[i], 5) for i in rows]
        out["sets"][s]["sums"] = [[round(v, 6) for v in sums[i]] for i in rows]
        log("    " + s + ": " + ", ".join(f"{f} {100 * out['sets'][s][f]['within_10pct']:.0f}%"
                                          for f in FORMS))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet20"])
    ap.add_argument("--targets", nargs="+", default=["host-onnxruntime"])
    ap.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["small", "off"])
    ap.add_argument("--variants", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1, help="1: validation variants (the benchmark's are seed 0)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "calibration_fit.json"))
    a = ap.parse_args(argv)
    if a.variants < 2:
        raise SystemExit(f"--variants {a.variants}: need at least 2")
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    # many networks go to the converting processes at once: the default sharing strategy
    # runs out of file descriptors on MobileNetV2
    torch.multiprocessing.set_sharing_strategy("file_system")
    head = provenance("calibration_fit", "bench_calibration_fit.py", argv)
    log = lambda s: print(s, flush=True)  # noqa: E731
    out = Path(a.out)
    old = json.loads(out.read_text()) if out.is_file() else {}
    new = []
    for target in a.targets:
        for name in a.models:
            new.append(run_one(name, target, a.sets, a.variants, a.seed, log))
            rows = merge_rows(rows_with_host(old), new, lambda r: (r["model"], r["target"], r["seed"]))
            write_json(out, {**head, "forms": {
                "profile": "the profile as built", "uniform": "refit on the re-timed calibrations "
                "without the every-other-group copies", "one_fit": "every re-timed calibration in "
                "one three-term fit", "alternate": "edgeprune's fit of every re-timed calibration"},
                "sums": "per network: table ms of its layers, of them the ones with an output "
                        "below round_to", "rows": rows})
    print(f"\n{'target':18} {'model':12} {'set':6} " + " ".join(f"{f:>10}" for f in FORMS) + "  build/retimed")
    for r in new:
        level = statistics.median(c["ratio"] for c in r["calibration_level"])
        for s, v in r["sets"].items():
            print(f"{r['target']:18} {r['model']:12} {s:6} "
                  + " ".join(f"{100 * v[f]['within_10pct']:9.0f}%" for f in FORMS) + f"  {level:.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
