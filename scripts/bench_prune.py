"""The pruner's acceptance benchmark: a committed baseline pruned to a fraction of its
predicted latency on a target, without labels and without fine-tuning; then accuracy on the
labeled test split (labels are read only here, to score), export to the target's format and
measured latency of baseline and pruned model (interleaved rounds, median of round medians).
On an int8 target both are exported as a user ships them (full int8, calibrated on 500
unlabeled train images) and their int8 top-1 is reported too.

Prints a table and writes bench/results/prune_<baseline>_<target>.json.

    .venv/bin/python scripts/bench_prune.py [--baseline resnet20-shapes] [--target host-litert]
        [--budget 0.5] [--epochs 8] [--ablations] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import edgeprune
from edgeprune import data
from edgeprune._io import write_json
from edgeprune.convert import to_tflite_int8
from edgeprune.errors import BudgetBelowFloorError, ProfileError
from edgeprune.profiling import LatencyProfile
from edgeprune.profiling.latency import host_identity
from edgeprune.profiling.measurement import convert_for, time_artifact
from edgeprune.pruning import PruneConfig
from edgeprune.targets import load_target
from edgeprune.train import evaluate

ROOT = Path(__file__).resolve().parents[1]

ABLATIONS = {
    "full method": {},
    "no feature loss": {"feature_loss": False},
    "no mutual learning": {"mutual_learning": False},
    "plain Taylor (no latency weighting)": {"latency_weighting": False},
    "static sparse set": {"dynamic_set": False},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="resnet20-shapes", help="directory under bench/baselines/")
    ap.add_argument("--target", default="host-litert")
    ap.add_argument("--budget", type=float, default=0.5, help="fraction of the baseline's predicted latency")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="pruning images (default: the whole train split)")
    ap.add_argument("--config", default=None, help="PruneConfig JSON (the flags above override it)")
    ap.add_argument("--ablations", action="store_true", help="also run each ablation switch")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for pruning")
    ap.add_argument("--quick", action="store_true", help="1 epoch on 2,000 images (a smoke run)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.quick:
        a.epochs, a.limit, a.rounds = 1, a.limit or 2000, min(a.rounds, 3)
    torch.set_num_threads(a.threads)
    import json

    base_cfg = PruneConfig.from_dict(json.loads(Path(a.config).read_text())) if a.config else PruneConfig()
    base_cfg = base_cfg.replace(epochs=a.epochs)
    if a.quick:  # ~30 steps: choose the sparse set often enough to ramp
        base_cfg = base_cfg.replace(update_interval=5)
    ckpt = ROOT / "bench" / "baselines" / a.baseline / "model.safetensors"
    teacher = edgeprune.load(ckpt)
    spec = teacher.edgeprune_spec
    t = load_target(a.target)
    committed = ROOT / "profiles" / t.name / f"{spec.architecture}.json"
    try:  # the committed profile describes the machine that measured it
        prof = LatencyProfile.load(committed, target=t)
    except ProfileError as e:
        print(f"not using {committed.relative_to(ROOT)} ({str(e).split(';')[0]}); profiling this machine")
        prof = edgeprune.profile(teacher, target=t)
    train_spec = spec.metadata.get("data", "shapes").split(":")[0]
    src = data.open(train_spec, split="train", size=spec.input.hw, limit=a.limit)
    batches = data.Batches(src, a.batch_size, mean=spec.input.mean, std=spec.input.std, augment=True,
                           fixed_batches=base_cfg.heldout_batches, seed=base_cfg.seed)
    test = data.open(f"{train_spec}:test", labels=True, size=spec.input.hw)
    base_acc = evaluate(teacher, test, input_spec=spec.input)

    rows = []
    variants = ABLATIONS if a.ablations else {"full method": {}}
    int8 = t.precision == "int8"
    if int8:  # the int8 files are exported as a user ships them: calibrated on unlabeled train images
        calib_src = data.open(train_spec, split="train", size=spec.input.hw, limit=CALIB_IMAGES)
        calib = list(data.Batches(calib_src, 100, mean=spec.input.mean, std=spec.input.std, shuffle=False))
        test_x, test_y = _arrays(test, spec)

    with tempfile.TemporaryDirectory(prefix="edgeprune-bench-prune-") as d:
        example = torch.zeros(1, *spec.input.shape)

        def artifact(model, name):
            path = Path(d) / f"{name}{_suffix(t)}"
            if int8:
                return to_tflite_int8(model, path, example, calib, min_images=CALIB_IMAGES)
            return convert_for(model, t, path, example)

        base_art = artifact(teacher, "baseline")
        base_int8 = _int8_top1(base_art, test_x, test_y) if int8 else None
        for label, switches in variants.items():
            cfg = base_cfg.replace(**switches)
            t0 = time.perf_counter()
            try:
                res = edgeprune.prune(teacher, batches, target=t, profile=prof, budget_ratio=a.budget,
                                      config=cfg)
            except BudgetBelowFloorError as e:  # a budget below the reachable floor: a row that says so
                rows.append({"variant": label, "switches": switches, "infeasible": str(e)})
                print(f"{label}: infeasible: {e}", flush=True)
                continue
            prune_s = time.perf_counter() - t0
            acc = evaluate(res.model, test, input_spec=spec.input, reference=teacher,
                           reference_input_spec=spec.input)
            art = artifact(res.model, f"pruned{len(rows)}")
            base_runs, pruned_runs = [], []
            for _ in range(a.rounds):  # interleave so drift hits both alike
                base_runs.append(time_artifact(base_art, t).median_ms)
                pruned_runs.append(time_artifact(art, t).median_ms)
            base_ms, pruned_ms = statistics.median(base_runs), statistics.median(pruned_runs)
            rows.append({
                "variant": label, "switches": switches,
                "baseline_top1": base_acc.top1, "pruned_top1": acc.top1,
                "top1_drop_points": 100 * (base_acc.top1 - acc.top1),
                "agreement_with_baseline": acc.agreement,
                "budget_ms": res.budget, "baseline_predicted_ms": res.baseline_cost,
                "pruned_predicted_ms": res.predicted_cost,
                "baseline_measured_ms": base_ms, "pruned_measured_ms": pruned_ms,
                "measured_over_budget": pruned_ms / res.budget,
                # the budget as a ratio of the baseline timed beside it (drift hits both alike)
                "budget_ratio": a.budget, "measured_ratio": pruned_ms / base_ms,
                "measured_ratio_over_budget_ratio": pruned_ms / base_ms / a.budget,
                "verify_rounds": list(res.verify), "within_budget": res.within_budget,
                "measured_speedup": base_ms / pruned_ms,
                "baseline_round_medians_ms": base_runs, "pruned_round_medians_ms": pruned_runs,
                "params_before": res.params_before, "params_after": res.params_after,
                "macs_before": res.macs_before, "macs_after": res.macs_after,
                "group_widths_after": res.group_widths_after, "student": res.student,
                "removal_max_abs_diff": res.removal_max_abs_diff,
                "max_hard_zeroed_norm": res.max_hard_zeroed_norm,
                "prune_s": round(prune_s, 1), "steps": res.steps, "config": cfg.to_dict(),
            })
            if int8:  # what the measured file is, and what it scores
                rows[-1].update({"artifact": f"full-int8 .tflite, calibrated on {CALIB_IMAGES} unlabeled "
                                             "train images (the export's default logits range)",
                                 "baseline_int8_top1": base_int8,
                                 "pruned_int8_top1": _int8_top1(art, test_x, test_y)})
            _print_rows(rows[-1:], header=not any("pruned_top1" in r for r in rows[:-1]))

    quick = "_quick" if a.quick else ""
    out = Path(a.out) if a.out else ROOT / "bench" / "results" / f"prune_{a.baseline}_{t.name}{quick}.json"
    write_json(out, {
        "what": f"{a.baseline} pruned to {a.budget}x of its predicted {t.name} latency, no labels, "
                "no fine-tuning; top-1 on the labeled test split; latency measured on the target",
        "command": "scripts/bench_prune.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": host_identity(), "torch_threads": a.threads, "pruning_images": len(src),
        "test_images": len(test), "batch_size": a.batch_size, "latency_rounds": a.rounds,
        "target": t.to_dict(), "rows": rows,
    })
    print(f"\nwrote {out}")
    return 0


CALIB_IMAGES = 500


def _arrays(source, spec):
    xs, ys = zip(*data.Batches(source, 250, mean=spec.input.mean, std=spec.input.std, shuffle=False),
                 strict=True)
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def _int8_top1(path, x, y) -> float:
    from edgeprune.runtimes import open_session

    sess = open_session(path, runtime="litert")
    return float((sess.run_batched(x).argmax(1) == y).mean())


def _suffix(t) -> str:
    return ".tflite" if t.runtime == "litert" else ".onnx"


def _print_rows(rows: list[dict], header: bool) -> None:
    if header:
        print(f"{'variant':38} {'top1 base':>9} {'pruned':>7} {'drop':>6} {'agree':>6} {'budget':>7} "
              f"{'pred':>6} {'meas':>6} {'meas/bud':>8} {'speedup':>7} {'params':>8} {'s':>5}")
    for r in rows:
        if "infeasible" in r:
            continue
        print(f"{r['variant']:38} {100 * r['baseline_top1']:8.2f}% {100 * r['pruned_top1']:6.2f}% "
              f"{r['top1_drop_points']:6.2f} {100 * r['agreement_with_baseline']:5.1f}% "
              f"{r['budget_ms']:7.3f} {r['pruned_predicted_ms']:6.3f} {r['pruned_measured_ms']:6.3f} "
              f"{r['measured_over_budget']:8.3f} {r['measured_speedup']:6.2f}x {r['params_after']:8,} "
              f"{r['prune_s']:5.0f}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
