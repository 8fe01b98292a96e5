"""How long a latency profile takes to build, cold (empty layer cache) and warm (every
single-layer model converted before), split into converting and measuring.

For each zoo model and target: a profile with a fresh, empty layer cache, then the same
profile again with that cache. Prints a table and writes bench/results/profile_build.json
(rows merged by model, target and host, so the matrix can be run in parts).

    .venv/bin/python scripts/bench_profile_build.py [--models resnet20 ...] [--targets host-litert]
        [--save profiles]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch
from _bench import merge_rows, provenance, rows_with_host  # scripts/_bench.py, beside this file

from edgeprune import models
from edgeprune._io import write_json
from edgeprune.profiling.latency import dense_copy, profile

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)


def build(name: str, target: str, cache: Path, save: Path | None = None) -> dict:
    model = dense_copy(models.create(name)).eval()
    t0 = time.perf_counter()
    prof = profile(model, target, input_shape=SHAPE, layer_cache=cache)
    row = {"build_s": round(time.perf_counter() - t0, 1), **prof.build,
           "points": sum(t.points() for t in prof.tables.values())}
    if save is not None:
        prof.save(save / target / f"{name}.json")
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--targets", nargs="*", default=["host-litert"])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "profile_build.json"))
    ap.add_argument("--save", default=None, metavar="DIR",
                    help="also write each warm profile to DIR/<target>/<model>.json (e.g. profiles)")
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    rows = []
    for target in a.targets:
        for name in a.models or models.names():
            with tempfile.TemporaryDirectory(prefix="edgeprune-layer-cache-") as d:
                cold = build(name, target, Path(d))
                warm = build(name, target, Path(d), save=Path(a.save) if a.save else None)
            rows.append({"model": name, "target": target, "cold": cold, "warm": warm})
            print(f"{target:18} {name:12} cold {cold['build_s']:6.1f} s (convert {cold['convert_s']:6.1f}, "
                  f"measure {cold['measure_s']:5.1f})  warm {warm['build_s']:6.1f} s (convert "
                  f"{warm['convert_s']:5.1f}, measure {warm['measure_s']:5.1f}), {cold['points']} points, cold: "
                  f"{cold['points_converted']} converted + {cold['templates_converted']} templates, "
                  f"{cold['points_derived']} derived",
                  flush=True)
    out = Path(a.out)
    old = rows_with_host(json.loads(out.read_text())) if out.is_file() else []
    doc = {
        **provenance("profile_build", "bench_profile_build.py", argv),
        "method": "edgeprune.profile (default max_points, 2 converter processes, the target's "
                  "protocol) with an empty layer cache (cold), then again with that cache (warm); "
                  "on LiteRT most single-layer points are derived from one converted template per "
                  "signature (points_derived; per row, not in rows older than 2026-12-03T10); "
                  "convert_s includes the end-to-end calibration networks (4-6), which the layer "
                  "cache also keeps (calibrations_from_cache; rows before 2026-12-07 converted "
                  "them on every build)",
        "rows": merge_rows(old, rows, key=lambda r: (r["model"], r["target"])),
    }
    write_json(out, doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
