"""The main job on bundled data, on whatever machine runs it: the committed ResNet-20 baseline
-> a latency profile measured here (host-litert) -> pruned to a latency budget without labels
or fine-tuning -> baseline and pruned model converted, checked against PyTorch and timed
together on the host runtime -> the pruned model's bundle (TFLite fp32/int8, ONNX, CoreML,
model.json, README) validated on the host and, when `make arm64-runtime` has built it, on
aarch64 runtimes under QEMU.

Nothing measured on another machine is used: the committed profiles under profiles/ describe
the machine that measured them. The budget is 0.5x of the baseline's predicted latency, or
1.05x the smallest latency pruning can reach on this machine when 0.5x is below that.

    make demo            # or: .venv/bin/python scripts/demo.py [--epochs N] [--out out/demo]
    make demo QUICK=1    # a few minutes: a short pruning run and small checks (CI runs this)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edgeprune.cli._quiet import quiet_output

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "bench" / "baselines" / "resnet20-shapes" / "model.safetensors"
TARGET = "host-litert"
FLOOR_MARGIN = 1.05  # a budget at least this far above the reachable floor


def demo_budget(requested: float, baseline_ms: float, floor_ms: float) -> tuple[float, str]:
    """The budget ratio the demo prunes to, and the line that explains it: ``requested``, or
    FLOOR_MARGIN x the smallest latency channel pruning reaches when ``requested`` is below
    that margin (at the floor itself the pruner has no room left to choose channels)."""
    floor_ratio = floor_ms / baseline_ms
    if requested >= FLOOR_MARGIN * floor_ratio:
        return requested, f"{requested:g}x of the predicted baseline {baseline_ms:.3f} ms"
    ratio = FLOOR_MARGIN * floor_ratio
    where = "below" if requested < floor_ratio else f"less than {FLOOR_MARGIN:g}x"
    return ratio, (f"{ratio:.2f}x of the predicted baseline {baseline_ms:.3f} ms: {requested:g}x is {where} "
                   f"the smallest this machine can reach by channel pruning ({floor_ms:.3f} ms, "
                   f"{floor_ratio:.2f}x), so {FLOOR_MARGIN:g}x that")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(BASELINE))
    ap.add_argument("--data", default="shapes:test", help="labeled test data (scoring only)")
    ap.add_argument("--prune-data", default="shapes:train", help="unlabeled data the pruner learns from")
    ap.add_argument("--budget", type=float, default=0.5, help="fraction of the predicted latency")
    ap.add_argument("--epochs", type=int, default=3, help="pruning epochs")
    ap.add_argument("--quick", action="store_true",
                    help="a short pruning run (150 steps), no int8 export, small checks: a smoke test, "
                         "not a result")
    ap.add_argument("--out", default=str(ROOT / "out" / "demo"))
    ap.add_argument("--verbose", action="store_true", help="show third-party warnings and logs")
    a = ap.parse_args(argv)
    with quiet_output(a.verbose):
        return _demo(a)


def _demo(a: argparse.Namespace) -> int:
    import torch

    import edgeprune
    from edgeprune import convert, data
    from edgeprune.bundle import FORMATS, ExportConfig
    from edgeprune.errors import ProfileError
    from edgeprune.profiling import LatencyProfile, time_artifacts
    from edgeprune.profiling.latency import host_identity, runtime_version
    from edgeprune.pruning import PruneConfig
    from edgeprune.runtimes import arm64
    from edgeprune.targets import load_target
    from edgeprune.train import evaluate

    torch.set_num_threads(2)
    t_start = time.perf_counter()
    n_test = 500 if a.quick else None  # None: the whole split
    n_check = 500
    n_arm64 = 32 if a.quick else 100  # QEMU runs ~50x slower than the host: a subset
    out = Path(a.out)
    target = load_target(TARGET)
    host = host_identity()

    model = edgeprune.load(a.checkpoint)
    spec = model.edgeprune_spec
    ispec = spec.input
    test = data.open(a.data, labels=True, size=ispec.hw, limit=n_test)
    acc = evaluate(model, test, input_spec=ispec)
    print(f"model     {_rel(a.checkpoint)} ({spec.architecture}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters): top-1 {100 * acc.top1:.2f}% "
          f"on {len(test):,} {a.data} images")

    # 1. a latency profile of this machine (its own earlier profile seeds it, never another's)
    t0 = time.perf_counter()
    prof_path = out / f"profile-{TARGET}.json"
    cache, why = None, "no earlier profile"
    if prof_path.is_file():
        try:
            cache = LatencyProfile.load(prof_path, target=TARGET)
            why = "reusing the layer points of this machine's earlier profile"
            if cache.architecture != spec.architecture:
                cache, why = None, "earlier profile is of another architecture"
        except ProfileError as e:
            why = f"earlier profile not used: {e}".split("; ")[0]
    prof = edgeprune.profile(model, target=TARGET, cache=cache, max_points=4 if a.quick else 8)
    prof.save(prof_path)
    print(f"target    {TARGET}: {target.runtime} {runtime_version(target.runtime)}, {target.precision}, "
          f"{target.threads} thread(s), on {host['cpu']} ({host['machine']}, {host['cores']} cores)")
    print(f"profile   measured here in {time.perf_counter() - t0:.0f} s ({why})")

    # 2. a budget this machine can reach
    cfg = PruneConfig(steps=150, update_interval=15) if a.quick else PruneConfig(epochs=a.epochs)
    reach = edgeprune.budget_range(model, target=TARGET, profile=prof, config=cfg)
    # the demo stays where the profile is calibrated: channel pruning (the profile's fit has
    # not seen networks with residual blocks removed; docs/benchmarks.md)
    ratio, note = demo_budget(a.budget, reach.baseline, reach.channel_floor)
    print(f"budget    {ratio * reach.baseline:.3f} ms = {note}")

    # 3. prune on unlabeled images
    t0 = time.perf_counter()
    src = data.open(a.prune_data, size=ispec.hw)  # labels=False: the pruner never sees any
    batches = data.Batches(src, 64, mean=ispec.mean, std=ispec.std, augment=True,
                           fixed_batches=cfg.heldout_batches)
    res = edgeprune.prune(model, batches, target=TARGET, profile=prof, budget_ratio=ratio, config=cfg)
    pruned = res.model
    pacc = evaluate(pruned, test, input_spec=ispec, reference=model, reference_input_spec=ispec)
    print(f"prune     {res.steps} steps on {len(src):,} unlabeled {a.prune_data} images in "
          f"{time.perf_counter() - t0:.0f} s: {res.baseline_cost:.3f} -> {res.predicted_cost:.3f} ms "
          f"predicted, {res.params_before:,} -> {res.params_after:,} parameters")
    ckpt = edgeprune.save(pruned, out / "pruned.safetensors", spec=spec.with_metadata(
        pruned_for=TARGET, test_top1=pacc.top1, teacher_test_top1=acc.top1,
        predicted_ms=res.predicted_cost, budget_ms=res.budget))
    _write_json(out / "prune_result.json", res.to_dict())

    # 4. both models on the host runtime: parity with PyTorch, and latency timed together
    n_parity = 64 if a.quick else 200
    sub = data.open(a.data, labels=True, size=ispec.hw, limit=n_parity)
    xs = next(iter(data.batches(sub, n_parity, mean=ispec.mean, std=ispec.std)))[0]
    tfl = {}
    for name, m in (("baseline", model), ("pruned", pruned)):
        tfl[name] = convert.to_tflite(m, out / f"{name}.tflite", torch.zeros(1, *ispec.shape))
    ms = time_artifacts([tfl["baseline"], tfl["pruned"]], target)
    parity = max(_max_diff(m, tfl[n], xs) for n, m in (("baseline", model), ("pruned", pruned)))

    # 5. the bundle an app developer receives: every format, model.json, README; validated
    formats = [f for f in FORMATS if f != "coreml" or _has_coreml()]
    if a.quick:  # 150 steps leave logits too close for int8's 99% agreement bar: not a result
        formats.remove("tflite-int8")
    calib = data.Batches(data.open(a.prune_data, size=ispec.hw, limit=200 if a.quick else 500), 100,
                         mean=ispec.mean, std=ispec.std, shuffle=False)
    bundle = edgeprune.export(pruned, out / "bundle", data=calib,
                              config=ExportConfig(formats=tuple(formats)), force=True)
    checks = data.open(a.data, labels=True, size=ispec.hw, limit=n_check)
    report = edgeprune.validate(bundle, data.batches(checks, 250, mean=ispec.mean, std=ispec.std))
    where = f"{len(checks)} {a.data} images on the host"
    if arm64.available():
        emu = edgeprune.validate(bundle, data.batches(checks, n_arm64, mean=ispec.mean, std=ispec.std),
                                 on=["arm64-emulated"], max_images=n_arm64)
        report = report + emu
        where += f", the first {n_arm64} on aarch64 runtimes under QEMU"
    print(f"\nvalidation of the bundle on {where}:\n{report}")
    if not arm64.available():
        print("(aarch64 check skipped: `make arm64-runtime` builds the emulated aarch64 runtime)")
    if a.quick:
        print("(quick: no int8 export; a 150-step pruning run is too rough for int8's agreement bar)")

    b, p = ms
    print(f"\nsummary ({'quick run: a smoke test, not a result; ' if a.quick else ''}"
          f"{time.perf_counter() - t_start:.0f} s)")
    print(f"  latency   {TARGET} on {host['cpu']}, measured ({target.measure.passes} interleaved passes "
          f"of {target.measure.runs} runs, fastest): baseline {b.median_ms:.3f} ms, pruned "
          f"{p.median_ms:.3f} ms ({b.median_ms / p.median_ms:.2f}x faster)")
    print(f"  budget    {res.budget:.3f} ms: pruned predicted {res.predicted_cost:.3f} ms, measured "
          f"{p.median_ms:.3f} ms ({p.median_ms / res.budget:.2f}x the budget)")
    print(f"  accuracy  top-1 on {len(test):,} {a.data} images: {100 * acc.top1:.2f}% -> "
          f"{100 * pacc.top1:.2f}% ({100 * pacc.agreement:.2f}% agree with the baseline); no labels "
          "were used in pruning and nothing was fine-tuned")
    print(f"  parity    TFLite vs PyTorch on {n_parity} images: max |logit difference| {parity:.2e}")
    print("  files     " + "\n            ".join([
        f"{_rel(ckpt)}  the pruned checkpoint",
        f"{_rel(out / 'bundle')}/  the bundle: {', '.join(art.file for art in bundle.artifacts)}, "
        "model.json, README.md, validation.json",
        f"{_rel(prof_path)}  this machine's latency profile",
        f"{_rel(out / 'prune_result.json')}  widths, costs and training history",
        f"{_rel(tfl['baseline'])}, {_rel(tfl['pruned'])}  the timed TFLite files"]))
    _write_json(out / "bundle" / "validation.json", report.to_dict())
    if parity > 1e-4:
        print(f"PARITY FAILED: max abs logit difference {parity:.3g} > 1e-4", file=sys.stderr)
        return 1
    if not report.ok:
        print("VALIDATION FAILED (see the table above)", file=sys.stderr)
        return 1
    return 0


def _max_diff(model, path: Path, x) -> float:
    import numpy as np
    import torch

    from edgeprune import runtimes

    with torch.no_grad():
        ref = model(x).numpy()
    got = runtimes.open_session(path, threads=1).run_batched(x.numpy())
    return float(np.abs(got - ref).max())


def _write_json(path: Path, obj) -> None:
    from edgeprune._io import write_json

    write_json(path, json.loads(json.dumps(obj, default=str)))


def _rel(p) -> str:
    p = Path(p).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _has_coreml() -> bool:
    try:
        import coremltools  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
