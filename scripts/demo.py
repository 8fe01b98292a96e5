"""The main job on bundled data: the committed ResNet-20 baseline -> profile host-litert ->
prune to half its predicted latency (no labels, no fine-tuning) -> evaluate both -> export
ONNX and TFLite -> run both on the host runtimes -> accuracy, parity and measured latency ->
the pruned model's bundle (TFLite fp32/int8, ONNX, CoreML, model.json, README) validated on
the host and, when `make arm64-runtime` has built it, on aarch64 runtimes under QEMU.

    make demo            # or: .venv/bin/python scripts/demo.py [--epochs N] [--out out/demo]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import edgeprune
from edgeprune import data, export, runtimes, validate
from edgeprune.profile import LatencyProfile
from edgeprune.prune import PruneConfig
from edgeprune.runtimes import time_session
from edgeprune.train import evaluate, predict
from edgeprune.validate import arm64

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "bench" / "baselines" / "resnet20-shapes" / "model.safetensors"
TARGET = "host-litert"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(BASELINE))
    ap.add_argument("--data", default="shapes:test", help="labeled test data (scoring only)")
    ap.add_argument("--prune-data", default="shapes:train", help="unlabeled data the pruner learns from")
    ap.add_argument("--budget", type=float, default=0.5, help="fraction of the predicted latency")
    ap.add_argument("--epochs", type=int, default=3, help="pruning epochs")
    ap.add_argument("--parity-images", type=int, default=200)
    ap.add_argument("--arm64-images", type=int, default=100, help="images for the emulated aarch64 check")
    ap.add_argument("--runs", type=int, default=100, help="timed runs per runtime (median reported)")
    ap.add_argument("--out", default=str(ROOT / "out" / "demo"))
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    t_start = time.perf_counter()
    out = Path(a.out)

    model = edgeprune.load(a.checkpoint)
    spec = model.edgeprune_spec
    print(f"model     {a.checkpoint} ({spec.architecture}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters)")
    test = data.open(a.data, labels=True, size=spec.input.hw)
    acc = evaluate(model, test, input_spec=spec.input)
    print(f"pytorch   {a.data}: {acc}")

    # 1. latency profile on the target (committed points are reused when this host measured them)
    t0 = time.perf_counter()
    committed = ROOT / "profiles" / TARGET / f"{spec.architecture}.json"
    cache = LatencyProfile.load(committed, target=TARGET) if committed.is_file() else None
    prof = edgeprune.profile(model, TARGET, cache=cache)
    prof.save(out / f"profile-{TARGET}.json")
    print(f"profile   {TARGET}: baseline predicted {prof.predict_ms(model):.3f} ms "
          f"({time.perf_counter() - t0:.0f} s)")

    # 2. prune to the budget on unlabeled images
    t0 = time.perf_counter()
    cfg = PruneConfig(epochs=a.epochs)
    src = data.open(a.prune_data, size=spec.input.hw)  # labels=False: the pruner never sees any
    batches = data.Batches(src, 64, mean=spec.input.mean, std=spec.input.std, augment=True,
                           fixed_batches=cfg.heldout_batches)
    res = edgeprune.prune(model, batches, target=TARGET, profile=prof, budget_ratio=a.budget, config=cfg)
    pruned = res.model
    print(f"prune     {len(src)} unlabeled images, {res.steps} steps ({time.perf_counter() - t0:.0f} s)")
    print("          " + str(res).replace("\n", "\n          "))
    pacc = evaluate(pruned, test, input_spec=spec.input, reference=model, reference_input_spec=spec.input)
    edgeprune.save(pruned, out / "pruned.safetensors", spec=spec.with_metadata(
        pruned_for=TARGET, val_top1=pacc.top1, teacher_val_top1=acc.top1,
        predicted_ms=res.predicted_ms, budget_ms=res.budget_ms))
    print(f"pytorch   pruned on {a.data}: {pacc}")

    # 3. export both, run on the host runtimes: parity and measured latency
    rows = []
    for name, m in (("baseline", model), ("pruned", pruned)):
        rows += _export_and_run(m, name, spec, out, a)
    print()
    print(f"{'model':9} {'format':7} {'runtime':12} {'version':8} {'max|dlogit|':>11} {'top1 agree':>10} "
          f"{'acc':>7} {'median ms':>9} {'p10-p90 ms':>13} {'size KiB':>8}")
    for r in rows:
        print(f"{r['model']:9} {r['format']:7} {r['runtime']:12} {r['version']:8} {r['diff']:11.2e} "
              f"{100 * r['agree']:9.1f}% {100 * r['acc']:6.2f}% {r['lat'].median_ms:9.3f} "
              f"{r['lat'].p10_ms:6.3f}-{r['lat'].p90_ms:6.3f} {r['size'] / 1024:8.0f}")
    tfl = {r["model"]: r["lat"].median_ms for r in rows if r["format"] == "tflite"}
    print(f"\nparity on {a.parity_images} {a.data} images; latency: batch 1, 1 thread, median of {a.runs} "
          f"runs after 20 warm-up runs on this host")
    print(f"budget    {res.budget_ms:.3f} ms on {TARGET}: pruned predicted {res.predicted_ms:.3f} ms, "
          f"measured {tfl['pruned']:.3f} ms ({tfl['pruned'] / res.budget_ms:.2f}x the budget; measured "
          f"speed-up {tfl['baseline'] / tfl['pruned']:.2f}x); top-1 {100 * acc.top1:.2f}% -> "
          f"{100 * pacc.top1:.2f}%")

    # 4. the bundle an app developer receives: every format, model.json, README; validated
    t0 = time.perf_counter()
    formats = [f for f in export.FORMATS if f != "coreml" or _has_coreml()]
    calib = data.Batches(data.open(a.prune_data, size=spec.input.hw, limit=500), 100,
                         mean=spec.input.mean, std=spec.input.std, shuffle=False)
    bundle = export(pruned, out / "bundle", formats=formats, calibration=calib)
    print(f"\n{bundle}\n({time.perf_counter() - t0:.0f} s)")
    checks = data.open(a.data, labels=True, size=spec.input.hw, limit=500)
    report = validate(bundle, data.batches(checks, 250, mean=spec.input.mean, std=spec.input.std))
    where = f"{len(checks)} {a.data} images on the host"
    if arm64.available():  # QEMU runs ~50x slower than the host: a subset
        emu = validate(bundle, data.batches(checks, a.arm64_images, mean=spec.input.mean, std=spec.input.std),
                       on=["arm64-emulated"], max_images=a.arm64_images)
        report = type(report)(report.bundle, report.checks + emu.checks)
        where += f", the first {a.arm64_images} under aarch64 emulation"
    print(f"\nvalidation on {where}:\n{report}")
    if not arm64.available():
        print("(arm64-emulated skipped: run `make arm64-runtime` to build the emulated aarch64 runtime)")
    print(f"demo took {time.perf_counter() - t_start:.0f} s")
    worst = max(r["diff"] for r in rows)
    if worst > 1e-4 or min(r["agree"] for r in rows) < 1.0:
        print(f"PARITY FAILED: max abs logit diff {worst:.3g}", file=sys.stderr)
        return 1
    if not report.ok:
        print("VALIDATION FAILED (see the table above)", file=sys.stderr)
        return 1
    return 0


def _has_coreml() -> bool:
    try:
        import coremltools  # noqa: F401
    except ImportError:
        return False
    return True


def _export_and_run(model, name: str, spec, out: Path, a) -> list[dict]:
    example = torch.zeros(1, *spec.input.shape)
    paths = [export.to_onnx(model, out / f"{name}.onnx", example),
             export.to_tflite(model, out / f"{name}.tflite", example)]
    sub = data.open(a.data, labels=True, size=spec.input.hw, limit=a.parity_images)
    ref, labels = predict(model, sub, input_spec=spec.input)
    x = np.concatenate([b[0].numpy() for b in data.batches(sub, 256, mean=spec.input.mean,
                                                              std=spec.input.std)])
    rows = []
    for path in paths:
        sess = runtimes.open_session(path, threads=1)
        got = sess.run_batched(x) if sess.input_shape[0] > 0 else sess.run(x)
        rows.append({"model": name, "format": path.suffix[1:], "runtime": sess.runtime,
                     "version": sess.runtime_version, "diff": float(np.abs(got - ref).max()),
                     "agree": float((got.argmax(1) == ref.argmax(1)).mean()),
                     "acc": float((got.argmax(1) == labels).mean()),
                     "lat": time_session(sess, x[:1], warmup=20, runs=a.runs),
                     "size": path.stat().st_size})
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
