"""Compare the two int8 output ranges (``--int8-logits full`` and ``top2``) on every committed
`shapes`/`digits` baseline: each model is exported to full-int8 TFLite twice from the same
calibration images and validated on the host runtime against PyTorch on held-out test images.

Prints a table and writes bench/results/int8_logits.json.

    .venv/bin/python scripts/bench_int8.py [--images 2000] [--calib-images 500] [--only resnet20-shapes ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from _bench import baseline_checkpoints, load_with_data  # scripts/_bench.py, beside this file

import edgeprune
from edgeprune import data
from edgeprune._io import write_json
from edgeprune.bundle import ExportConfig
from edgeprune.profiling.latency import host_identity

ROOT = Path(__file__).resolve().parents[1]
RANGES = ("full", "top2")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000, help="test images per model")
    ap.add_argument("--calib-images", type=int, default=500)
    ap.add_argument("--only", nargs="*", default=None, help="baseline directory names")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8_logits.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    ckpts = baseline_checkpoints()
    if a.only:
        ckpts = [c for c in ckpts if c.parent.name in a.only]
    rows = []
    print(f"{'model':22} {'range':5} {'images':>6} {'agree':>7} {'flips':>5} {'top1':>7} {'ref':>7} "
          f"{'out scale':>9} {'SQNR dB':>7}")
    for ck in ckpts:
        model, spec, calib, test = load_with_data(ck, a.calib_images, a.images)
        for rng in RANGES:
            with tempfile.TemporaryDirectory(prefix="edgeprune-bench-int8-") as d:
                bundle = edgeprune.export(model, Path(d) / "b", data=calib, config=ExportConfig(
                    formats=("tflite-int8",), int8_logits=rng))
                report = edgeprune.validate(bundle, data.batches(test, 250, mean=spec.input.mean,
                                                                 std=spec.input.std),
                                            on=["host"], max_images=a.images)
            c = report.checks[0]
            q = dataclasses.asdict(bundle.artifacts[0].io.output.quantization)
            flips = round((1 - c.top1_agreement) * c.images)
            rows.append({"model": ck.parent.name, "int8_logits": rng, "images": c.images,
                         "top1_agreement": c.top1_agreement, "flips": flips, "top1": c.top1,
                         "reference_top1": c.reference_top1, "sqnr_db_inside_range": c.sqnr_db,
                         "output_quantization": q, "status": c.status})
            print(f"{ck.parent.name:22} {rng:5} {c.images:6d} {100 * c.top1_agreement:6.2f}% {flips:5d} "
                  f"{100 * c.top1:6.2f}% {100 * c.reference_top1:6.2f}% {q['scale']:9.4f} {c.sqnr_db:7.1f}",
                  flush=True)
    write_json(a.out, {
        "what": "full-int8 TFLite with the output range over all calibration logits (full) or over the "
                "deciding ones (top2), validated on the host runtime against PyTorch",
        "command": "scripts/bench_int8.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": host_identity(),
        "calibration_images": a.calib_images, "rows": rows,
    })
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
