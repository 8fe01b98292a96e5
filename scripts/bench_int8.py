"""Compare int8 output ranges (``--int8-logits full`` and ``top2``) and label-free PTQ steps
(``--ptq``: cross-layer equalization, AdaRound, bias correction; edgeprune.convert.ptq) on
every committed `shapes`/`digits` baseline, and on any checkpoint given with ``--checkpoint``:
each model is exported to full-int8 TFLite from the same calibration images, once per range and
PTQ set, and validated on the host runtime against PyTorch on held-out test images.

Prints a table and writes bench/results/int8_logits.json (rows merged by model, range and PTQ
set, so the matrix can be run in parts).

    .venv/bin/python scripts/bench_int8.py [--images 2000] [--calib-images 500] [--only resnet20-shapes ...]
        [--ranges top2] [--ptq none cle adaround bias_correction cle,adaround,bias_correction]
        [--checkpoint out/pruned.safetensors]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
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
    ap.add_argument("--checkpoint", nargs="*", default=[], help="more checkpoints (e.g. a pruned model); "
                    "its data set is the one of its spec")
    ap.add_argument("--split", default="test", choices=("val", "test"),
                    help="where agreement is measured: val to choose the default, test for the final table")
    ap.add_argument("--ranges", nargs="*", default=list(RANGES), choices=RANGES)
    ap.add_argument("--ptq", nargs="*", default=["none"],
                    help="PTQ sets: 'none' or steps joined by commas, e.g. cle,adaround,bias_correction")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8_logits.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    ckpts = baseline_checkpoints()
    if a.only is not None:
        ckpts = [c for c in ckpts if c.parent.name in a.only]
    ckpts += [Path(c) for c in a.checkpoint]
    sets = [() if p == "none" else tuple(p.split(",")) for p in a.ptq]
    rows = []
    print(f"{'model':22} {'range':5} {'ptq':32} {'images':>6} {'agree':>7} {'flips':>5} {'top1':>7} {'ref':>7} "
          f"{'out scale':>9} {'SQNR dB':>7} {'export s':>8}")
    head = {
        "what": "full-int8 TFLite with the output range over all calibration logits (full) or over the "
                "deciding ones (top2), after label-free PTQ steps (int8_ptq; [] = plain calibration), "
                "validated on the host runtime against PyTorch",
        "host": host_identity(), "calibration_images": a.calib_images}
    for ck in ckpts:
        model, spec, calib, test = load_with_data(ck, a.calib_images, a.images, split=a.split)
        name = ck.parent.name if ck.name == "model.safetensors" else ck.stem
        for rng, ptq in [(r, p) for r in a.ranges for p in sets]:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="edgeprune-bench-int8-") as d:
                bundle = edgeprune.export(model, Path(d) / "b", data=calib, config=ExportConfig(
                    formats=("tflite-int8",), int8_logits=rng, int8_ptq=ptq))
                report = edgeprune.validate(bundle, data.batches(test, 250, mean=spec.input.mean,
                                                                 std=spec.input.std),
                                            on=["host"], max_images=a.images)
            c = report.checks[0]
            q = dataclasses.asdict(bundle.artifacts[0].io.output.quantization)
            flips = round((1 - c.top1_agreement) * c.images)
            export_s = time.perf_counter() - t0
            rows.append({"model": name, "int8_logits": rng, "int8_ptq": list(ptq), "split": a.split,
                         "images": c.images,
                         "top1_agreement": c.top1_agreement, "flips": flips, "top1": c.top1,
                         "reference_top1": c.reference_top1, "sqnr_db_inside_range": c.sqnr_db,
                         "output_quantization": q, "status": c.status,
                         "export_and_check_s": round(export_s, 1),
                         "command": "scripts/bench_int8.py " + " ".join(sys.argv[1:] if argv is None else argv),
                         "date": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            print(f"{name:22} {rng:5} {','.join(ptq) or 'none':32} {c.images:6d} {100 * c.top1_agreement:6.2f}% "
                  f"{flips:5d} {100 * c.top1:6.2f}% {100 * c.reference_top1:6.2f}% {q['scale']:9.4f} "
                  f"{c.sqnr_db:7.1f} {export_s:8.0f}", flush=True)
        write_json(a.out, _merge(Path(a.out), rows, head))  # after each model: a killed run keeps them
    print(f"\nwrote {a.out}")
    return 0


def _merge(out: Path, rows: list[dict], head: dict) -> dict:
    """``rows`` merged into an earlier file: rows of other (model, range, PTQ set) are kept
    (rows written before PTQ sets existed are plain calibration, int8_ptq [])."""
    def key(r: dict) -> tuple:
        return r["model"], r["int8_logits"], tuple(r.get("int8_ptq", [])), r.get("split", "test")

    old = json.loads(out.read_text()) if out.is_file() else {}
    kept = []
    for r in old.get("rows", []):
        if key(r) not in {key(n) for n in rows}:
            kept.append({"int8_ptq": [], "split": "test", "command": old.get("command"), "date": old.get("date"),
                         **r})
    return {**head, "rows": kept + rows}


if __name__ == "__main__":
    raise SystemExit(main())
