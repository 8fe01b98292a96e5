"""Where does int8 disagreement come from: rounding the weights, or rounding the activations?

For every committed `shapes` baseline (and any ``--checkpoint``), the int8 model that
``to_tflite_int8`` converts is run in PyTorch (``edgeprune.convert.simulate_int8``, same
quantizer, calibration and top-2 output range) three ways:

- ``weights``: only the weights on the converter's int8 grid (BatchNorm folded), activations float;
- ``activations``: only the activations rounded (the PT2E model with float weights);
- ``both``: the full int8 model.

Each is compared with the float model on held-out images: top-1 flips, and the error of the
decisive margin (the float model's top logit minus its runner-up, recomputed from the int8
outputs for the same two classes): its standard deviation and 99th percentile of |error|.
A flip happens where that error exceeds the float margin, so the margin error says how large
the disagreement is independent of how many near-ties a split happens to hold. The simulation
approximates the runtime (one int8 level apart on a small fraction of outputs; test_ptq);
bench/results/int8_logits.json has the runtime's numbers.

Prints a table and writes bench/results/int8_error_sources.json (rows merged by model, PTQ
set and variant).

    .venv/bin/python scripts/bench_int8_error.py [--split val] [--images 1000] [--ptq none cle] [--only resnet20-shapes]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from _bench import baseline_checkpoints, load_with_data  # scripts/_bench.py, beside this file

from edgeprune import data
from edgeprune._io import write_json
from edgeprune.convert import simulate_int8
from edgeprune.convert.ptq import fold_batchnorm, prepare_int8, quantize_weight
from edgeprune.profiling.latency import host_identity

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("weights", "activations", "both")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000, help="held-out images per model")
    ap.add_argument("--calib-images", type=int, default=500)
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--only", nargs="*", default=None, help="baseline directory names")
    ap.add_argument("--checkpoint", nargs="*", default=[], help="more checkpoints (e.g. a pruned model)")
    ap.add_argument("--ptq", nargs="*", default=["none"], help="PTQ sets: 'none' or steps joined by commas")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8_error_sources.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    ckpts = [c for c in baseline_checkpoints() if c.parent.name.endswith("-shapes")
             and (a.only is None or c.parent.name in a.only)] + [Path(c) for c in a.checkpoint]
    sets = [() if p == "none" else tuple(p.split(",")) for p in a.ptq]
    command = "scripts/bench_int8_error.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = []
    print(f"{'model':34} {'ptq':12} {'variant':11} {'images':>6} {'flips':>5} {'margin err std':>14} "
          f"{'p99 |err|':>9} {'top1':>7} {'ref':>7} {'max fp32 margin of a flip':>25}")
    head = {
        "what": "int8 disagreement split by source: the int8 model simulated in PyTorch "
                "(edgeprune.convert.simulate_int8, top-2 output range) with only weights, only "
                "activations, or both rounded, against the float model",
        "host": host_identity(), "calibration_images": a.calib_images}
    for ck in ckpts:
        model, spec, calib, held = load_with_data(ck, a.calib_images, a.images, split=a.split)
        name = ck.parent.name if ck.name == "model.safetensors" else ck.stem
        batches = list(data.batches(held, 250, mean=spec.input.mean, std=spec.input.std))
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        images = torch.cat([b[0] if isinstance(b, (tuple, list)) else b for b in calib])
        model.eval()
        with torch.no_grad():
            ref = model(x)
        top = ref.topk(2, dim=1)
        margin = top.values[:, 0] - top.values[:, 1]
        for ptq in sets:
            t0 = time.perf_counter()
            for variant in VARIANTS:
                if variant == "weights":
                    out = _weights_only(model, images, ptq)(x)
                else:
                    out = simulate_int8(model, images[:1], [images], min_images=len(images), ptq=ptq,
                                        weights=variant == "both")(x)
                rows.append(_row(name, ptq, variant, out, ref, top.indices, margin, y, a.split, command))
                r = rows[-1]
                print(f"{name:34} {','.join(ptq) or 'none':12} {variant:11} {r['images']:6d} {r['flips']:5d} "
                      f"{r['margin_error_std']:14.4f} {r['margin_error_p99']:9.3f} {100 * r['top1']:6.2f}% "
                      f"{100 * r['reference_top1']:6.2f}% {r['max_fp32_margin_of_a_flip'] or 0:25.3f}", flush=True)
            rows[-1]["seconds_for_three_variants"] = round(time.perf_counter() - t0, 1)
        write_json(a.out, _merge(Path(a.out), rows, head))  # after each model: a killed run keeps them
    print(f"\nwrote {a.out}")
    return 0


def _weights_only(model, images, ptq):
    """The float model (BatchNorm folded, ``ptq`` applied) with its conv/linear weights on the
    converter's per-channel int8 grid."""
    m = prepare_int8(model, images[:256], ptq)[0] if ptq else fold_batchnorm(model)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                mod.weight.copy_(quantize_weight(mod.weight))

    def run(x):
        with torch.no_grad():
            return m(x)
    return run


def _row(name, ptq, variant, out, ref, idx, margin, y, split, command) -> dict:
    err = (out.gather(1, idx[:, :1]) - out.gather(1, idx[:, 1:])).squeeze(1) - margin
    flipped = out.argmax(1) != idx[:, 0]
    return {"model": name, "int8_ptq": list(ptq), "variant": variant, "split": split, "images": len(out),
            "flips": int(flipped.sum()), "top1_agreement": float(1 - flipped.float().mean()),
            "margin_error_std": float(err.std()), "margin_error_p99": float(err.abs().quantile(0.99)),
            "max_fp32_margin_of_a_flip": float(margin[flipped].max()) if flipped.any() else None,
            "top1": float((out.argmax(1) == y).float().mean()),
            "reference_top1": float((ref.argmax(1) == y).float().mean()),
            "command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _merge(out: Path, rows: list[dict], head: dict) -> dict:
    def key(r: dict) -> tuple:
        return r["model"], tuple(r["int8_ptq"]), r["variant"], r["split"]

    new = {key(r) for r in rows}
    old = json.loads(out.read_text()).get("rows", []) if out.is_file() else []
    return {**head, "rows": [r for r in old if key(r) not in new] + rows}


if __name__ == "__main__":
    raise SystemExit(main())
