"""Export every committed baseline (and any extra checkpoint, e.g. a pruned one) to every
format, then validate each bundle on held-out `shapes`/`digits` test images: export time,
artifact size, host latency (1 thread, median), parity numbers, int8 and CoreML agreement,
and, when the emulated aarch64 runtime is built, aarch64-vs-x86 differences.

Prints a table and writes bench/results/export.json; rows of models not run this time are
kept, each with the command and date that produced it, so a model can be re-run alone.

    .venv/bin/python scripts/bench_export.py [--only vgg_small-shapes] [--extra out/demo/pruned.safetensors]
        [--images 500] [--quick]   # resnet20-shapes only, 100 images
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _bench import baseline_checkpoints, load_with_data, provenance  # scripts/_bench.py

import edgeprune
from edgeprune import data
from edgeprune._io import write_json
from edgeprune.bundle import FORMATS, ExportConfig
from edgeprune.runtimes import arm64

ROOT = Path(__file__).resolve().parents[1]


def _has_coreml() -> bool:
    try:
        import coremltools  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="baseline directory names")
    ap.add_argument("--extra", nargs="*", default=[], help="more checkpoints (e.g. pruned models)")
    ap.add_argument("--images", type=int, default=500, help="validation images per model")
    ap.add_argument("--calib-images", type=int, default=500)
    ap.add_argument("--arm64-images", type=int, default=256,
                    help="images for the emulated aarch64 check (QEMU is slow)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="default: bench/results/export.json (export_quick.json)")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    ckpts = [c for c in baseline_checkpoints() if a.only is None or c.parent.name in a.only]
    if a.quick:
        ckpts, a.images, a.calib_images = [ROOT / "bench/baselines/resnet20-shapes/model.safetensors"], 100, 100
    a.out = a.out or str(ROOT / "bench" / "results" / ("export_quick.json" if a.quick else "export.json"))
    ckpts += [Path(p) for p in a.extra]
    formats = tuple(f for f in FORMATS if f != "coreml" or _has_coreml())
    on = ["host"] + (["arm64-emulated"] if arm64.available() else [])
    results = []
    head = provenance("export", "bench_export.py", argv)
    t_all = time.perf_counter()
    print(f"{'model':28} {'format':12} {'export s':>8} {'KiB':>6} {'host ms':>8} {'max|d|':>9} {'agree':>7} "
          f"{'top1':>7} {'ref':>7} {'arm64 vs x86':>12} status")
    for ck in ckpts:
        model, spec, calib, test = load_with_data(ck, a.calib_images, a.images)
        with tempfile.TemporaryDirectory(prefix="edgeprune-bench-export-") as d:
            bundle = edgeprune.export(model, Path(d) / "bundle", data=calib,
                                      config=ExportConfig(formats=formats))
            report = edgeprune.validate(bundle, data.batches(test, 250, mean=spec.input.mean,
                                                             std=spec.input.std), on=["host"])
            arm64_s = None
            if "arm64-emulated" in on:
                t0 = time.perf_counter()
                emu = edgeprune.validate(bundle, data.batches(test, a.arm64_images, mean=spec.input.mean,
                                                              std=spec.input.std),
                                         on=["arm64-emulated"], max_images=a.arm64_images)
                report = report + emu
                arm64_s = round(time.perf_counter() - t0, 1)  # every artifact, in one agent process
        name = ck.parent.name if ck.name == "model.safetensors" else ck.stem
        for art in bundle.artifacts:
            checks = {c.platform.split(" ")[0]: c for c in report.checks if c.artifact == art.file}
            host, emu = checks.get("host"), checks.get("arm64-emulated")
            row = {"model": name, "checkpoint": str(ck.relative_to(ROOT) if ck.is_relative_to(ROOT) else ck),
                   "format": art.format, "export_s": art.export_s, "size_bytes": art.size_bytes,
                   "host_latency": art.to_dict()["host_latency"], "io": art.to_dict()["io"],
                   "host": host.__dict__ if host else None, "arm64_emulated": emu.__dict__ if emu else None,
                   "arm64_validate_s_all_artifacts": arm64_s, "command": head["command"], "date": head["date"]}
            results.append(row)
            ms = art.host_latency.median_ms
            print(f"{name:28} {art.format:12} {art.export_s:8.1f} {art.size_bytes / 1024:6.0f} "
                  f"{(f'{ms:.3f}' if ms else '-'):>8} "
                  f"{(f'{host.max_abs:.2e}' if host and host.max_abs is not None else '-'):>9} "
                  f"{(f'{100 * host.top1_agreement:.1f}%' if host and host.top1_agreement is not None else '-'):>7} "
                  f"{(f'{100 * host.top1:.2f}%' if host and host.top1 is not None else '-'):>7} "
                  f"{(f'{100 * host.reference_top1:.2f}%' if host and host.reference_top1 is not None else '-'):>7} "
                  f"{(f'{emu.vs_x86_max_abs:.1e}' if emu and emu.vs_x86_max_abs is not None else '-'):>12} "
                  f"{host.status if host else '-'}{'/' + emu.status if emu else ''}", flush=True)
    write_json(a.out, {
        **head,
        "what": "every baseline (and extras) exported to every format and validated against PyTorch",
        "bars": "docs/export.md, Parity bars: fp32 max abs <= 1e-4 + 1e-5 x logit scale (1e-4 up to "
                "scale 1), 100% agreement without near-ties; aarch64 fp32 vs x86 reported, int8 vs x86 "
                "bit-exact; int8 agreement and accuracy gated on the host only",
        "wall_s": round(time.perf_counter() - t_all, 1),
        "validation_images": a.images, "arm64_validation_images": a.arm64_images,
        "calibration_images": a.calib_images, "platforms": on,
        "arm64_versions": arm64.versions() if arm64.available() else None,
        "rows": _merge(Path(a.out), results),
    })
    print(f"\nwrote {a.out}")
    return 0


def _merge(out: Path, rows: list[dict]) -> list[dict]:
    """``rows`` after the earlier file's rows of other (model, format) pairs, which keep the
    command and date of the run that made them."""
    new = {(r["model"], r["format"]) for r in rows}
    old = json.loads(out.read_text()) if out.is_file() else {}
    kept = [{**r, "command": r.get("command", old.get("command")), "date": r.get("date", old.get("date"))}
            for r in old.get("rows", []) if (r["model"], r["format"]) not in new]
    return kept + rows


if __name__ == "__main__":
    raise SystemExit(main())
